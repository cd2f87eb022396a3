"""Writing ShapesWorld to disk: an image folder with metadata.jsonl, a `datasets` dataset, a GenEval prompt set.

    OUT/info.json                       config, seed, split sizes
    OUT/<split>/images/000000.png       split in train, val, test (disjoint random streams)
    OUT/<split>/metadata.jsonl          one record a line; `file_name` and `image` = "images/000000.png", so the
                                        folder is a Hugging Face imagefolder, a LLaVA conversation file (with
                                        image_root OUT/<split>) and a caption file at once
    OUT/hf/                             DatasetDict.save_to_disk: the same records with an `image` column;
                                        `geneval` is a JSON string there (its keys vary by tag)

Samples are rendered and PNG-encoded by a process pool (each sample depends only on (seed, split, index), so the
bytes do not depend on the number of workers) and written in order by the parent.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing as mp
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from vqrae.data.geneval import TAG_COUNTS, build_prompt_set, write_jsonl
from vqrae.data.shapes import SPLITS, ShapesConfig, config_dict, render_sample

logger = logging.getLogger(__name__)

HF_BATCH = 2048
CHUNK = 256  # samples per pool task: large enough to amortise pickling, small enough for a smooth progress bar


def encode_png(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)  # 2x faster than the default, files ~15% larger
    return buf.getvalue()


def _render_chunk(args: tuple) -> list[tuple[bytes, dict]]:
    cfg, seed, split, start, stop, records = args
    out = []
    for i in range(start, stop):
        s = render_sample(cfg, seed, split, i, record=records[i - start] if records else None)
        out.append((encode_png(s.image), s.record))
    return out


def generate(cfg: ShapesConfig, num: int, seed: int, split: str = "train", workers: int = 2,
             records: list[dict] | None = None) -> Iterator[tuple[bytes, dict]]:
    """(PNG bytes, record) for samples 0..num-1 of a split, in order; `records` makes one scene per GenEval record."""
    tasks = []
    for start in range(0, num, CHUNK):
        stop = min(start + CHUNK, num)
        tasks.append((cfg, seed, split, start, stop, records[start:stop] if records else None))
    if workers <= 1 or len(tasks) == 1:
        for t in tasks:
            yield from _render_chunk(t)
        return
    with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers) as pool:
        for chunk in pool.imap(_render_chunk, tasks):
            yield from chunk


def hf_features():
    """The `datasets` schema of a ShapesWorld row (explicit, so empty lists and nulls keep their types)."""
    from datasets import Features, List, Value
    from datasets import Image as HFImage

    s, i32, f32 = Value("string"), Value("int32"), Value("float32")
    return Features({
        "image": HFImage(),
        "id": s, "split": s, "index": Value("int64"), "seed": Value("int64"), "width": i32, "height": i32,
        "tag": s, "caption": s, "captions": List(s),
        "objects": List({"class": s, "color": s, "rgb": List(i32), "box": List(i32), "center": List(f32),
                         "radius": f32, "area": i32, "mask": {"size": List(i32), "counts": List(i32)}}),
        "background": {"kind": s, "colors": List(List(i32)), "angle": f32, "noise_seed": Value("int64"),
                       "noise_std": f32},
        "geneval": s,
        "vqa": List({"question": s, "answer": s, "type": s, "pope": s, "choices": List(s)}),
        "conversations": List({"from": s, "value": s}),
    })


def _hf_row(png: bytes, rec: dict) -> dict:
    row = {k: v for k, v in rec.items() if k not in ("file_name", "image")}
    row["geneval"] = json.dumps(rec["geneval"])
    row["image"] = {"bytes": png, "path": None}
    return row


def split_sizes(num: int, val_frac: float, test_frac: float) -> dict[str, int]:
    if num < 1 or not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"need num >= 1 and split fractions in [0, 1) summing below 1 (num={num}, "
                         f"val={val_frac}, test={test_frac})")
    val, test = round(num * val_frac), round(num * test_frac)
    return {"train": num - val - test, "val": val, "test": test}


def _write_samples(samples: Iterator[tuple[bytes, dict]], folder: Path | None, digits: int, hf: bool,
                   bar=None):
    """Write FOLDER/images/*.png + FOLDER/metadata.jsonl (if folder) and return a `datasets` Dataset (if hf)."""
    parts, rows = [], []  # Arrow tables of HF_BATCH rows each: far less memory than one list of dicts
    if hf:
        import pyarrow as pa
        from datasets import Dataset, concatenate_datasets

        # Arrow converts the rows directly (5x faster than Dataset.from_list); the schema carries the features.
        schema = hf_features().arrow_schema
    with contextlib.ExitStack() as stack:
        meta = None
        if folder is not None:
            (folder / "images").mkdir(parents=True, exist_ok=True)
            meta = stack.enter_context(open(folder / "metadata.jsonl", "w", encoding="utf-8"))
        for png, rec in samples:
            rel = f"images/{rec['index']:0{digits}d}.png"
            if meta is not None:
                (folder / rel).write_bytes(png)
                meta.write(json.dumps({"file_name": rel, "image": rel} | rec) + "\n")
            if hf:
                rows.append(_hf_row(png, rec))
                if len(rows) == HF_BATCH:
                    parts.append(Dataset(pa.Table.from_pylist(rows, schema=schema)))
                    rows = []
            if bar is not None:
                bar.update(1)
    if not hf:
        return None
    parts += [Dataset(pa.Table.from_pylist(rows, schema=schema))] if rows else []
    return concatenate_datasets(parts)


def write_shapes(out: str | Path, cfg: ShapesConfig, sizes: dict[str, int], seed: int = 0, workers: int = 2,
                 formats: tuple[str, ...] = ("folder", "hf"), progress: bool = True) -> dict:
    """Render every split and write the requested formats; returns the info dict (also written to info.json)."""
    from tqdm.auto import tqdm

    unknown = [f for f in formats if f not in ("folder", "hf")] + [s for s in sizes if s not in SPLITS]
    if unknown or not formats:
        raise ValueError(f"unknown formats/splits {unknown}; formats are folder and hf, splits {tuple(SPLITS)}")
    if "hf" in formats:
        try:
            import datasets  # noqa: F401
        except ImportError as exc:
            raise ValueError("the hf format needs the `datasets` package (pip install 'vqrae[train]'); "
                             "or write --format folder") from exc
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bar = tqdm(total=sum(sizes.values()), desc="ShapesWorld", unit="img", disable=not progress)
    hf_splits = {}
    for split, n in sizes.items():
        if n > 0:
            samples = generate(cfg, n, seed, split, workers)
            ds = _write_samples(samples, out / split if "folder" in formats else None, 6, "hf" in formats, bar)
            if ds is not None:
                hf_splits[split] = ds
    bar.close()
    if hf_splits:
        from datasets import DatasetDict

        DatasetDict(hf_splits).save_to_disk(str(out / "hf"))
    info = {"generator": "ShapesWorld", "seed": seed, "splits": sizes, "formats": list(formats),
            "config": config_dict(cfg), "seconds": round(time.perf_counter() - t0, 2)}
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("wrote %d ShapesWorld images to %s in %.1f s", sum(sizes.values()), out, info["seconds"])
    return info


def write_prompt_set(out: str | Path, cfg: ShapesConfig, seed: int = 0, counts: dict[str, int] | None = None,
                     references: bool = True, workers: int = 2) -> list[dict]:
    """OUT/evaluation_metadata.jsonl (GenEval format, ShapesWorld classes); with `references`, one scene per prompt
    that satisfies it: OUT/reference/images/00000.png + OUT/reference/metadata.jsonl (`index` = prompt line)."""
    out = Path(out)
    records = build_prompt_set(cfg.classes, cfg.colors, counts or TAG_COUNTS, seed, cfg.max_objects)
    write_jsonl(out / "evaluation_metadata.jsonl", records)
    if references:
        samples = generate(cfg, len(records), seed, "geneval", workers, records=records)
        _write_samples(samples, out / "reference", 5, hf=False)
    return records
