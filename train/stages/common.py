"""What several stages share: where their images come from."""

from __future__ import annotations

from torch.utils.data import Dataset


def image_text_dataset(data: str, num: int, size: int, split: str, seed: int, kind: str = "caption",
                       crop: str = "center", flip: bool = False) -> Dataset:
    """`data == "shapes"`: ShapesWorld rendered on the fly (`num` images of `size` px, split seeds disjoint);
    anything else: a path the data readers understand (an image folder, records, a `datasets` dataset, tar
    shards; for ShapesWorld written by `vqrae data shapes --out DIR`, DIR/train or DIR/val)."""
    if data == "shapes":
        from vqrae.data.readers import ShapesDataset
        from vqrae.data.shapes import ShapesConfig

        return ShapesDataset(num, ShapesConfig(size=size), seed=seed, split=split, size=size)
    from vqrae.data import readers

    make = {"image": readers.image_dataset, "caption": readers.caption_dataset}[kind]
    return make(data, size=size, crop=crop, flip=flip)
