"""Atomic checkpoints: a write killed midway leaves the previous checkpoint usable and `latest`."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from vqrae.train.checkpoint import LATEST, CheckpointManager, load_rng, save_rng


def writer(value: int, die_after_first_file: bool = False):
    def write(folder):
        torch.save({"w": torch.full((4,), float(value))}, folder / "part1.pt")
        if die_after_first_file:
            os._exit(17)  # killed mid-write: no cleanup code runs, exactly like SIGKILL
        torch.save({"step": value}, folder / "part2.pt")

    return write


def test_write_killed_midway_leaves_previous_checkpoint_latest(tmp_path):
    root = tmp_path / "checkpoints"
    manager = CheckpointManager(root, keep_last=3)
    first = manager.save(1, writer(1))
    assert manager.latest() == first

    pid = os.fork()
    if pid == 0:  # the "training process" that dies while writing step 2
        CheckpointManager(root, keep_last=3).save(2, writer(2, die_after_first_file=True))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 17

    assert (root / ".tmp-step-00000002" / "part1.pt").is_file()  # the torn write is there ...
    restarted = CheckpointManager(root, keep_last=3)
    assert restarted.latest() == first  # ... but never taken for the latest
    assert (root / LATEST).read_text() == "step-00000001"
    assert torch.load(first / "part1.pt")["w"].tolist() == [1.0] * 4
    assert torch.load(first / "part2.pt")["step"] == 1

    assert [p.name for p in restarted.remove_partial()] == [".tmp-step-00000002"]
    assert not (root / ".tmp-step-00000002").exists()
    second = restarted.save(2, writer(2))
    assert restarted.latest() == second and torch.load(second / "part2.pt")["step"] == 2


def test_keep_last_prunes_oldest(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40):
        manager.save(step, writer(step))
    assert [p.name for p in manager.checkpoints()] == ["step-00000030", "step-00000040"]
    assert manager.latest().name == "step-00000040"


def test_dangling_or_missing_pointer_falls_back_to_newest_complete(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    assert manager.latest() is None
    manager.save(1, writer(1))
    manager.save(2, writer(2))
    (tmp_path / LATEST).write_text("step-00000009")  # names a folder someone deleted
    assert manager.latest().name == "step-00000002"
    (tmp_path / LATEST).unlink()
    assert manager.latest().name == "step-00000002"
    with pytest.raises(ValueError, match="keep_last must be >= 1"):
        CheckpointManager(tmp_path, keep_last=0)


def test_rng_states_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    save_rng(tmp_path, rank=0)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    load_rng(tmp_path, rank=0)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    with pytest.raises(FileNotFoundError, match="no RNG state for rank 1"):
        load_rng(tmp_path, rank=1)
