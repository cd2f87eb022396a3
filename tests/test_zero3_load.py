"""Under ZeRO-3 a unified model is loaded partitioned (transformers inside deepspeed.zero.Init), never whole on every
rank: 2 CPU processes, each must hold about half of the LLM's parameters, and the gathered weights must equal the
checkpoint. The memory this saves is measured by `vqrae bench zero3-load`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vqrae.train.zero3 import partitioned_init
from vqrae.unified_model.testing import tiny_unified_model

HERE = Path(__file__).resolve().parent


def test_zero3_loads_partitioned_on_two_ranks(tmp_path):
    folder = tmp_path / "um"
    tiny_unified_model(seed=0, llm_kwargs={"hidden_size": 64}).save_pretrained(folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "zero3_load_worker.py"), str(folder), str(tmp_path / "rank{rank}.json")]
    proc = subprocess.run(cmd, check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["active"] and r["world"] == 2
        assert r["llm_all_partitioned"]
        assert r["llm_local"] <= r["llm_total"] / 2 + 1024  # its half (partitions are padded a little)
        assert r["max_diff"] == 0.0
        assert not r["after_window"]  # the window closes: later loads are ordinary again
    assert sum(r["llm_local"] for r in ranks) >= ranks[0]["llm_total"]


def test_partitioned_init_is_a_no_op_below_zero3():
    from transformers.integrations import is_deepspeed_zero3_enabled

    for cfg in (None, {}, {"zero_optimization": {"stage": 2}}):
        with partitioned_init(cfg) as active:
            assert active is False and not is_deepspeed_zero3_enabled()
