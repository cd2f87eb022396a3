"""DeepSpeed ZeRO-2 and ZeRO-3 with 2 processes on the CPU (gloo), each in one torchrun launch that checks
(tests/train_ds_worker.py): the exported weights equal the parameters gathered from the shards, and a run that
crashes after a checkpoint and is resumed logs exactly the losses of an uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ds_config, zero_stage", [("zero2", 2), ("zero3", 3)])
def test_zero_two_processes_export_and_exact_resume(tmp_path, ds_config, zero_stage):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "train_ds_worker.py"), ds_config, str(tmp_path)]
    proc = subprocess.run(cmd, check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["zero_stage"] == zero_stage and result["world_size"] == 2
    if zero_stage == 3:
        assert result["partitioned"], "ZeRO-3 should have sharded the parameters"
    assert result["export_keys_match"]  # frozen weights and buffers included
    assert result["export_max_diff"] == 0.0
    full, resumed = result["losses_full"], result["losses_resumed"]
    assert len(full) == 4 and all(math.isfinite(x) for x in full)
    assert resumed == full
    ckpts = tmp_path / "resumed" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-00000004"
    assert (ckpts / "step-00000004" / "deepspeed").is_dir() and (tmp_path / "full" / "final" / "model.safetensors").is_file()
