"""The official GenEval image-folder layout: writing it (through the one sampler, resumable) and reading it back.

    OUT/00000/metadata.jsonl     the prompt's record (one JSON object), written last: its presence marks the
    OUT/00000/samples/0000.png   folder complete; samples 0000.png ... (4 per prompt by default)

Any model's images in this layout can be scored (the official scorer reads `<digits>/metadata.jsonl` and
`samples/<digits>.png`; so do we).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from vqrae.data.geneval import validate_geneval_record

logger = logging.getLogger(__name__)

SAMPLE_RE = re.compile(r"^\d+\.png$")


def prompt_folder(out: str | Path, index: int) -> Path:
    return Path(out) / f"{index:05d}"


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_prompt_folder(folder: Path, record: dict, images: Sequence[Image.Image]) -> None:
    """samples/0000.png ... then metadata.jsonl (each file atomically). Samples of an earlier, larger write are
    removed: a folder holds exactly the images of its last write (a scorer reads every sample it finds)."""
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        _atomic_write(folder / "samples" / f"{i:04d}.png", lambda p, im=image: im.save(p, format="PNG"))
    for stale in (folder / "samples").glob("*.png"):
        if stale.stem.isdigit() and int(stale.stem) >= len(images):
            stale.unlink()
    _atomic_write(folder / "metadata.jsonl", lambda p: p.write_text(json.dumps(record) + "\n", encoding="utf-8"))


def read_folder_record(folder: Path) -> dict | None:
    """The record in FOLDER/metadata.jsonl (None if absent); ValueError naming the file if it is not one."""
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        return None
    text = meta.read_text(encoding="utf-8").strip()
    try:
        record = json.loads(text.splitlines()[0] if text else "")
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta}: not a GenEval metadata record ({exc.msg})") from exc
    validate_geneval_record(record, where=str(meta))
    return record


def folder_done(folder: Path, record: dict, num_images: int) -> bool:
    """True when FOLDER already holds this prompt with `num_images` samples; ValueError if it holds another prompt."""
    existing = read_folder_record(folder)
    if existing is None:
        return False
    if existing != record:
        raise ValueError(f"{folder / 'metadata.jsonl'} holds {existing['prompt']!r}, not {record['prompt']!r}: "
                         "this folder was written from another prompt file; use a fresh --out")
    return all((folder / "samples" / f"{i:04d}.png").is_file() for i in range(num_images))


def _runs(indices: list[int], size: int) -> list[list[int]]:
    """Consecutive indices in chunks of at most `size` (so seeds stay tied to prompt positions)."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][-1] == i - 1 and len(out[-1]) < size:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def generate_folder(model, records: Sequence[dict], out: str | Path, num_images: int = 4, batch_size: int = 8,
                    seed: int = 0, sampling: dict | None = None, progress: bool = True) -> dict:
    """Write the layout for every record through `model.generate_images` (the one sampler), skipping prompts already
    written. Image i of prompt p always gets seed `seed + p * num_images + i`, so a resumed run writes what an
    uninterrupted one would. `batch_size` images go through the model at once (prompts are batched together).
    Returns {"generated", "skipped", "seconds", "seconds_per_prompt"}."""
    from tqdm.auto import tqdm

    if num_images < 1 or batch_size < 1:
        raise ValueError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pending = [i for i, rec in enumerate(records) if not folder_done(prompt_folder(out, i), rec, num_images)]
    skipped = len(records) - len(pending)
    if skipped:
        logger.info("%d of %d prompts already written in %s; generating %d", skipped, len(records), out, len(pending))
    t0 = time.perf_counter()
    bar = tqdm(total=len(records), initial=skipped, unit="prompt", desc="geneval", disable=not progress)
    per_call = max(1, batch_size // num_images)
    for run in _runs(pending, per_call):
        result = model.generate_images([records[i]["prompt"] for i in run], num_images=num_images,
                                       seed=seed + run[0] * num_images, batch_size=batch_size, **(sampling or {}))
        for i, images in zip(run, result.images):
            write_prompt_folder(prompt_folder(out, i), records[i], images)
        bar.update(len(run))
    bar.close()
    seconds = time.perf_counter() - t0
    return {"generated": len(pending), "skipped": skipped, "seconds": round(seconds, 3),
            "seconds_per_prompt": round(seconds / len(pending), 4) if pending else None}


def read_image_folder(root: str | Path) -> tuple[list[tuple[str, dict, list[Path]]], list[str]]:
    """([(folder name, record, sample paths)], [incomplete folder names]) of a GenEval image folder, in order.
    A prompt folder without metadata.jsonl (an interrupted write) is reported, not scored."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"GenEval image folder not found: {root}")
    prompts, incomplete = [], []
    for sub in sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        record = read_folder_record(sub)
        samples = sorted((p for p in (sub / "samples").glob("*.png") if SAMPLE_RE.match(p.name)),
                         key=lambda p: int(p.stem)) if (sub / "samples").is_dir() else []
        if record is None or not samples:
            incomplete.append(sub.name)
            continue
        prompts.append((sub.name, record, samples))
    if not prompts:
        raise ValueError(f"{root}: no GenEval prompt folders (<00000>/metadata.jsonl + samples/0000.png ...)")
    if incomplete:
        logger.warning("%s: %d prompt folders without metadata.jsonl or samples (not scored): %s", root,
                       len(incomplete), ", ".join(incomplete[:5]))
    return prompts, incomplete
