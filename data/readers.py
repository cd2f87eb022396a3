"""Readers for real data: image datasets, caption datasets and LLaVA conversation datasets as torch Datasets.

    ds = image_dataset("photos/", size=256, crop="random", flip=True)     # folder tree, datasets dir, tar shards
    ds = caption_dataset("captions.jsonl", size=256)                       # + "caption"
    ds = conversation_dataset("llava.json", image_root="images/", size=256)  # + "id", "conversations"
    loader = DataLoader(ds, batch_size=32, collate_fn=collate, num_workers=2)

Every item is a dict: "pixels" (3, H, W) float in [0, 1] (None for a text-only conversation), "name" (file or
record that the pixels came from), "skipped" (1 if the image at this index was unreadable and a neighbour was
returned instead, else 0), plus the record fields of the dataset kind. Summing "skipped" over a run (`collate` does
it per batch) counts every unreadable image once per epoch, however many DataLoader workers there are. Each
unreadable image is logged once per process; a data set in which nothing is readable is a ValueError. "Unreadable"
means missing or undecodable (FileNotFoundError / OSError, `UnreadableImage`); any other exception is a bug and
propagates. A malformed record is an `InvalidRecord` (a ValueError), raised when the data set is opened.

Sources, picked from the path by `open_source`:
- a folder tree of images (no records);
- a folder or .json/.jsonl file of records (`metadata.jsonl` in a folder: the Hugging Face imagefolder layout, which
  ShapesWorld writes), images relative to `image_root` (default: the records' folder);
- a `datasets` dataset saved with `save_to_disk`, or .parquet / .arrow files (image column: an Image feature or
  a path string);
- webdataset tar shards (a .tar file, a folder of them, or a list/glob): members grouped by key (the name up to the
  first dot of the basename); captions from `key.txt` or `key.json`, conversations from `key.json`. Read with the
  standard library; a shard that cannot be read completely keeps what was read before the damage.
"""

from __future__ import annotations

import glob
import json
import logging
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vqrae.data.images import CROPS, ImageSource, UnreadableImage, image_to_tensor, load_image
from vqrae.data.records import InvalidRecord, parse_records, read_records

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
KINDS = ("image", "caption", "conversation")


class FolderSource:
    """Every image file (by extension) under a folder, sorted."""

    def __init__(self, root: Path):
        self.root = root
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
        self.extras: list[dict] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> tuple[ImageSource, str]:
        return self.files[i], str(self.files[i])

    def describe(self) -> str:
        return f"image folder {self.root}"


class RecordSource:
    """Caption or conversation records from a JSON/JSONL file; image paths relative to `image_root`."""

    def __init__(self, path: Path, kind: str, image_root: Path | None, caption_key: str):
        self.path = path
        self.image_root = image_root or path.parent
        self.extras = parse_records(read_records(path), str(path), kind, caption_key)

    def __len__(self) -> int:
        return len(self.extras)

    def image(self, i: int) -> tuple[ImageSource | None, str]:
        rel = self.extras[i]["image"]
        if rel is None:
            return None, f"{self.path}: record {i}"
        return self.image_root / rel, str(self.image_root / rel)

    def describe(self) -> str:
        return f"records {self.path}"


class HFSource:
    """A `datasets` dataset (saved to disk, or parquet/arrow files); images are decoded by our loader, not datasets."""

    def __init__(self, path: Path, kind: str, split: str | None, image_key: str, caption_key: str,
                 image_root: Path | None):
        import datasets  # heavy: only when a datasets dataset is actually read

        self.path, self.image_key = path, image_key
        if path.is_dir() and not list(path.glob("*.parquet")):
            ds = datasets.load_from_disk(str(path))
        else:
            files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
            if all(f.suffix == ".arrow" for f in files):
                ds = datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in files])
            else:
                ds = datasets.Dataset.from_parquet([str(f) for f in files])
        if isinstance(ds, datasets.DatasetDict):
            if split is None:
                split = "train" if "train" in ds else next(iter(ds)) if len(ds) == 1 else None
            if split not in ds:
                raise ValueError(f"{path}: choose a split with split=... among {list(ds)} (got {split!r})")
            ds = ds[split]
        if len(ds) == 0:
            raise ValueError(f"{path}: the dataset has no rows")
        feature = ds.features.get(image_key)
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(image_key, datasets.Image(decode=False))
        elif not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
            raise ValueError(f"{path}: no image column {image_key!r} (columns: {ds.column_names})")
        self.image_root = image_root or (path if path.is_dir() else path.parent)
        self.images = ds.select_columns([image_key])
        self.extras = None
        if kind != "image":
            text_col = caption_key if kind == "caption" else "conversations"
            if text_col not in ds.column_names:
                raise ValueError(f"{path}: no {text_col!r} column for {kind} records (columns: {ds.column_names})")
            cols = [text_col] + (["id"] if "id" in ds.column_names else [])
            # Records are validated up front; "image" stands for the row's image (null: a text-only record).
            nulls = ds.data.column(image_key).is_null().to_pylist()
            recs = [dict(r, image=None if null else f"{image_key}[{i}]")
                    for i, (r, null) in enumerate(zip(ds.select_columns(cols), nulls))]
            self.extras = parse_records(recs, str(path), kind, caption_key)

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> tuple[ImageSource | None, str]:
        value = self.images[i][self.image_key]
        name = f"{self.path}[{i}]"
        if value is None:
            return (None, name) if self.extras is not None else (b"", name)
        if isinstance(value, str):
            return self.image_root / value, str(self.image_root / value)
        if value.get("bytes"):
            return value["bytes"], name if not value.get("path") else f"{name} ({value['path']})"
        if value.get("path"):
            return Path(value["path"]), value["path"]
        return b"", name

    def describe(self) -> str:
        return f"datasets dataset {self.path}"


class TarSource:
    """Webdataset-style tar shards, indexed once (member offsets); reads seek straight to an image's bytes."""

    def __init__(self, shards: Sequence[Path], kind: str, caption_key: str):
        self.shards = list(shards)
        self.items: list[tuple[int, int, int, str]] = []  # (shard, data offset, size, name)
        metas: list[dict] = []
        self.bad_shards: list[str] = []
        for s, shard in enumerate(self.shards):
            groups: dict[str, dict[str, Any]] = {}
            try:
                end = shard.stat().st_size
                with tarfile.open(shard, "r:") as tar:
                    for m in tar:
                        if not m.isfile() or m.offset_data + m.size > end:  # cut off by a truncated shard
                            continue
                        head, _, base = m.name.rpartition("/")
                        stem, _, ext = base.partition(".")
                        g = groups.setdefault(f"{head}/{stem}" if head else stem, {})
                        ext = ext.lower()
                        if "." + ext in IMAGE_EXTENSIONS and "image" not in g:
                            g["image"] = (m.offset_data, m.size, f"{shard}:{m.name}")
                        elif ext in ("txt", "caption", "json"):
                            g[ext] = tar.extractfile(m).read().decode("utf-8", errors="replace")
            except (tarfile.TarError, OSError, EOFError) as exc:
                logger.warning("tar shard %s is damaged (%s); keeping the %d samples read before", shard, exc,
                               len(groups))
                self.bad_shards.append(str(shard))
            for key, g in groups.items():
                if "image" not in g:
                    continue
                off, size, name = g["image"]
                self.items.append((s, off, size, name))
                meta: dict[str, Any] = {"image": name}
                if "json" in g:
                    try:
                        fields = json.loads(g["json"])
                    except json.JSONDecodeError as exc:
                        raise InvalidRecord(f"{shard}: {key}.json is not valid JSON ({exc.msg})") from exc
                    if not isinstance(fields, dict):
                        raise InvalidRecord(f"{shard}: {key}.json must hold a JSON object, got "
                                            f"{type(fields).__name__}")
                    meta.update(fields)
                    meta["image"] = name
                text = g.get("txt", g.get("caption"))
                if text is not None and caption_key not in meta:
                    meta[caption_key] = text.strip()
                metas.append(meta)
        if not self.items:
            raise ValueError(f"no samples with an image member in tar shards {[str(s) for s in self.shards]}")
        self.extras = None if kind == "image" else parse_records(metas, "tar shards", kind, caption_key)

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> tuple[ImageSource, str]:
        s, off, size, name = self.items[i]
        with open(self.shards[s], "rb") as f:  # one open per read: safe with forked DataLoader workers
            f.seek(off)
            return f.read(size), name

    def describe(self) -> str:
        return f"tar shards ({len(self.shards)} files)"


def _tar_shards(path: str | Path | Sequence[str | Path]) -> list[Path] | None:
    if isinstance(path, (list, tuple)):
        return [Path(p) for p in path]
    text = str(path)
    if any(ch in text for ch in "*?["):
        return [Path(p) for p in sorted(glob.glob(text))] or None
    p = Path(text)
    if p.is_file() and p.suffix == ".tar":
        return [p]
    if p.is_dir():
        return sorted(p.glob("*.tar")) or None
    return None


def open_source(path, kind: str = "image", split: str | None = None, image_root: str | Path | None = None,
                image_key: str = "image", caption_key: str = "caption"):
    """Pick the reader for `path` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    root = Path(image_root) if image_root is not None else None
    if not isinstance(path, (list, tuple)) and not any(ch in str(path) for ch in "*?["):
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"dataset not found: {p}")
        if split and p.is_dir() and (p / split).is_dir() and not (p / "dataset_dict.json").exists():
            p = p / split  # a ShapesWorld output folder: DIR/train, DIR/val, DIR/test
        path = p
    shards = _tar_shards(path)
    if shards:
        return TarSource(shards, kind, caption_key)
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() in (".json", ".jsonl"):
            return RecordSource(p, kind, root, caption_key)
        if p.suffix.lower() in (".parquet", ".arrow"):
            return HFSource(p, kind, split, image_key, caption_key, root)
        raise ValueError(f"unsupported dataset file {p} (expected .json, .jsonl, .parquet, .arrow or .tar)")
    if any((p / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")) or list(
            p.glob("*.parquet")):
        return HFSource(p, kind, split, image_key, caption_key, root)
    if (p / "metadata.jsonl").exists() and kind != "image":
        return RecordSource(p / "metadata.jsonl", kind, root, caption_key)
    if kind != "image":
        raise ValueError(f"{p}: a folder of images has no {kind} records; give a JSON/JSONL file, a folder with "
                         "metadata.jsonl, a datasets dataset or tar shards")
    return FolderSource(p)


class ImageDataset(Dataset):
    """A map-style dataset over any source: decode with `load_image`, transform with `image_to_tensor`."""

    def __init__(self, source, size: int | None = 256, crop: str = "center", flip: bool = False):
        if crop not in CROPS or (size is not None and int(size) <= 0):
            raise ValueError(f"bad transform: size={size!r} (positive or None), crop={crop!r} (one of {CROPS})")
        self.source, self.size, self.crop, self.flip = source, size, crop, flip
        self.skipped: dict[str, str] = {}  # this process's unreadable images: name -> reason

    def __len__(self) -> int:
        return len(self.source)

    def _extras(self, j: int) -> dict:
        if self.source.extras is None:
            return {}
        return {k: v for k, v in self.source.extras[j].items() if k != "image"}

    def __getitem__(self, i: int) -> dict:
        n = len(self.source)
        for k in range(n):
            j = (i + k) % n
            src, name = self.source.image(j)
            if src is None:  # a text-only conversation
                return {"pixels": None, "name": name, "skipped": 0, **self._extras(j)}
            try:
                img = load_image(src, name=name)
            except (UnreadableImage, OSError) as exc:  # bad input; anything else is a bug and propagates
                if name not in self.skipped:
                    self.skipped[name] = str(exc)
                    logger.warning("skipping unreadable image: %s", exc)
                continue
            pixels = image_to_tensor(img, self.size, self.crop, self.flip)
            # Count only the image at index i itself: each unreadable image is counted once per epoch.
            return {"pixels": pixels, "name": name, "skipped": int(k > 0), **self._extras(j)}
        raise ValueError(f"no readable image in {self.source.describe()}: all {n} failed to load")

    def scan(self) -> dict:
        """Try to decode every image once: {"total", "readable", "skipped": {name: reason}} (a data set check)."""
        from tqdm.auto import tqdm

        bad: dict[str, str] = {}
        for j in tqdm(range(len(self.source)), desc="checking images", unit="img"):
            src, name = self.source.image(j)
            if src is None:
                continue
            try:
                load_image(src, name=name)
            except (UnreadableImage, OSError) as exc:
                bad[name] = str(exc)
        return {"total": len(self.source), "readable": len(self.source) - len(bad), "skipped": bad}


def image_dataset(path, size: int | None = 256, crop: str = "center", flip: bool = False, split: str | None = None,
                  image_key: str = "image", image_root: str | Path | None = None) -> ImageDataset:
    """Images from a folder tree, a datasets dataset, tar shards or a record file: items {pixels, name, skipped}."""
    return ImageDataset(open_source(path, "image", split, image_root, image_key), size, crop, flip)


def caption_dataset(path, size: int | None = 256, crop: str = "center", flip: bool = False,
                    split: str | None = None, image_root: str | Path | None = None, image_key: str = "image",
                    caption_key: str = "caption") -> ImageDataset:
    """Text-to-image pairs: items {pixels, name, skipped, caption}. Keep flip off when captions say left/right."""
    src = open_source(path, "caption", split, image_root, image_key, caption_key)
    return ImageDataset(src, size, crop, flip)


def conversation_dataset(path, size: int | None = 256, crop: str = "center", split: str | None = None,
                         image_root: str | Path | None = None, image_key: str = "image") -> ImageDataset:
    """LLaVA conversations: items {pixels (None if text-only), name, skipped, id, conversations}."""
    return ImageDataset(open_source(path, "conversation", split, image_root, image_key), size, crop, False)


class ShapesDataset(Dataset):
    """ShapesWorld rendered on the fly (no files): items {pixels, name, skipped, id, caption, conversations, record}.

    Item i of a split is the same image as `vqrae data shapes` writes for that (seed, split, index).
    """

    def __init__(self, num: int, config=None, seed: int = 0, split: str = "train", size: int | None = None):
        from vqrae.data.shapes import ShapesConfig, sample_rng

        sample_rng(seed, split)  # validates the split name now rather than in a worker
        self.num, self.config, self.seed, self.split, self.size = num, config or ShapesConfig(), seed, split, size

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        from vqrae.data.shapes import render_sample

        if not 0 <= i < self.num:
            raise IndexError(i)
        s = render_sample(self.config, self.seed, self.split, i)
        pixels = image_to_tensor(Image.fromarray(s.image), self.size)
        rec = s.record
        return {"pixels": pixels, "name": rec["id"], "skipped": 0, "id": rec["id"], "caption": rec["caption"],
                "conversations": rec["conversations"], "record": rec}


def collate(batch: list[dict]) -> dict:
    """Stack "pixels" (when all present and equal in shape), sum "skipped", keep every other field as a list."""
    out: dict[str, Any] = {k: [b.get(k) for b in batch] for k in batch[0]}
    pix = out.get("pixels")
    if pix and all(isinstance(p, torch.Tensor) for p in pix) and len({p.shape for p in pix}) == 1:
        out["pixels"] = torch.stack(pix)
    if "skipped" in out:
        out["skipped"] = int(sum(out["skipped"]))
    return out


__all__ = ["IMAGE_EXTENSIONS", "ImageDataset", "ShapesDataset", "caption_dataset", "collate", "conversation_dataset",
           "image_dataset", "open_source"]
