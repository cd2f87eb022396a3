"""Data: ShapesWorld (the embedded default world), image / caption / conversation datasets, GenEval metadata.

Images (data.images): the one loader and the one transform everything uses.
    load_image(path | bytes, name=None) -> PIL RGB      # EXIF fixed, alpha on white; ValueError if unreadable
    image_to_tensor(img, size, crop="center"|"random"|"none", flip=False, generator=None) -> (3,H,W) in [0,1]
    tensor_to_pil(t) -> PIL RGB

Torch datasets (data.readers); every item is a dict, batched by `collate`:
    image_dataset(path, size)          {"pixels" (3,H,W) float [0,1], "name", "skipped"}
    caption_dataset(path, size)        + "caption"
    conversation_dataset(path, size)   + "id", "conversations" [{"from": "human"|"gpt", "value"}], "<image>" once;
                                       "pixels" is None for a text-only record
    ShapesDataset(num, config, seed, split, size)   on the fly: + "id", "caption", "conversations", "record"
  `path`: image folder tree, JSON/JSONL records (`image`/`file_name` relative to image_root), a folder with
  metadata.jsonl, a `datasets` dataset (save_to_disk, parquet, arrow) or webdataset .tar shards. Unreadable images
  are skipped, logged once and counted: sum batch["skipped"] over a run. Nothing readable -> ValueError.

ShapesWorld (data.shapes, data.shapes_writer; `vqrae data shapes --out DIR --num N --size S --seed K`):
    render_sample(ShapesConfig(size=64), seed, split, index) -> Sample(image uint8 HxWx3, labels HxW, record)
  record: id, split, index, seed, width, height, tag, caption, captions, conversations (LLaVA), vqa [{question,
  answer, type: count|color|shape|exist|position|mc, pope, choices}], geneval (GenEval record), background,
  objects [{class, color, rgb, box [x0,y0,x1,y1), center, radius, area, mask (COCO RLE; data.shapes.rle_to_mask)}].
  On disk: DIR/<split>/images/*.png + DIR/<split>/metadata.jsonl (records + file_name/image), DIR/hf (DatasetDict).

GenEval (data.geneval): validate_geneval_record, geneval_check(record, objects) (the official rules),
relative_position, build_prompt_set; `vqrae data prompts --out DIR` writes evaluation_metadata.jsonl + references.

Imports are lazy: this package loads nothing heavy until a name is used (no torch, no datasets).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_image": ".images", "image_to_tensor": ".images", "tensor_to_pil": ".images", "image_grid": ".images",
    "UnreadableImage": ".images", "InvalidRecord": ".records", "IMAGE_TOKEN": ".records",
    "image_dataset": ".readers", "caption_dataset": ".readers", "conversation_dataset": ".readers",
    "ImageDataset": ".readers", "ShapesDataset": ".readers", "collate": ".readers",
    "ShapesConfig": ".shapes", "render_sample": ".shapes",
    "write_shapes": ".shapes_writer", "write_prompt_set": ".shapes_writer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
