"""Atomic checkpoints: what the `latest` pointer names is always complete.

Layout under `root` (= OUTPUT_DIR/checkpoints):

    step-00000100/      one complete checkpoint (what is inside is the engine's business)
    step-00000200/
    latest              text file: "step-00000200"
    .tmp-step-00000300/ a checkpoint being written (or left behind by a killed run: removed at the next start)

A checkpoint is written into a `.tmp-` folder by every process, then renamed into place by the main process, and
only then is `latest` replaced (write a temporary file, fsync, os.replace). A run killed at any moment therefore
leaves `latest` naming the previous complete checkpoint. Several processes (and nodes) must share the filesystem.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"


def _noop() -> None:
    pass


class CheckpointManager:
    """Writes, finds and prunes the checkpoints under `root`. `barrier` synchronises the processes of a
    distributed run (a no-op in one process); only the main process renames, points and deletes."""

    def __init__(self, root: str | Path, keep_last: int = 2, is_main: bool = True, barrier: Callable[[], None] = _noop):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last
        self.is_main = is_main
        self.barrier = barrier

    @staticmethod
    def name(step: int) -> str:
        return f"step-{step:08d}"

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The checkpoint `latest` names; if the pointer is missing or dangling (a hand-deleted folder), the newest
        complete checkpoint, with a warning. None when there is none."""
        pointer = self.root / LATEST
        if pointer.is_file():
            target = self.root / pointer.read_text().strip()
            if _STEP_DIR.match(target.name) and target.is_dir():
                return target
            logger.warning("%s names %s, which does not exist; using the newest checkpoint", pointer, target.name)
        found = self.checkpoints()
        return found[-1] if found else None

    def remove_partial(self) -> list[Path]:
        """Delete `.tmp-` folders left by a run killed while saving (main process). Returns what it removed."""
        if not self.is_main or not self.root.is_dir():
            return []
        removed = [p for p in self.root.iterdir() if p.name.startswith(_TMP_PREFIX)]
        for p in removed:
            logger.warning("removing a partly written checkpoint left by an interrupted run: %s", p)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return removed

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Every process calls this; `write(folder)` writes this process's files into the temporary folder."""
        final = self.root / self.name(step)
        tmp = self.root / f"{_TMP_PREFIX}{self.name(step)}"
        if self.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        self.barrier()
        write(tmp)
        self.barrier()  # every process has finished writing
        if self.is_main:
            if final.exists():  # saving the same step again (e.g. a resumed run that stops at once)
                shutil.rmtree(final)
            _fsync_dir(tmp)
            os.replace(tmp, final)
            _write_text_atomic(self.root / LATEST, final.name)
            self._prune(keep=final)
        self.barrier()
        return final

    def _prune(self, keep: Path) -> None:
        old = [p for p in self.checkpoints() if p != keep]
        for p in old[: max(0, len(old) - (self.keep_last - 1))]:
            shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (and each file in it) so a rename after it cannot expose unwritten data."""
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """Every random stream a training step may draw from: Python, NumPy, torch CPU and all CUDA devices."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(folder: Path, rank: int) -> None:
    torch.save(rng_state(), folder / f"rng_rank{rank}.pt")


def load_rng(folder: Path, rank: int) -> None:
    path = folder / f"rng_rank{rank}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {folder} has no RNG state for rank {rank} ({path.name})")
    # Our own file, holding NumPy's state tuple: not loadable with weights_only.
    set_rng_state(torch.load(path, weights_only=False))
