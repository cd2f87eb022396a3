"""DeepSpeed ZeRO-2 and ZeRO-3 with 2 processes on the CPU (gloo), each in one torchrun launch that checks
(tests/train_ds_worker.py): the exported weights equal the parameters gathered from the shards, a run that
crashes after a checkpoint and is resumed logs exactly the losses of an uninterrupted run, and every parameter and
buffer (a tokenizer's frozen random codebook included) is the same in both processes at the start and at the end.
Plus, in-process: the guard around DeepSpeed's op table."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vqrae.tokenizer.testing import save_tiny_siglip
from vqrae.unified_model.testing import tiny_llm

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ds_config, zero_stage", [("zero2", 2), ("zero3", 3)])
def test_zero_two_processes_export_and_exact_resume(tmp_path, ds_config, zero_stage):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "train_ds_worker.py"), ds_config, str(tmp_path)]
    save_tiny_siglip(tmp_path / "encoder")  # the worker also trains a tokenizer stage on it
    tiny_llm(64).save_pretrained(tmp_path / "llm")  # ... and a stage that loads an LLM with partitioned_init
    proc = subprocess.run(cmd, check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    # The same weights in both processes: right after deepspeed.initialize, and after training. The tokenizer's
    # codebook is a buffer, which DeepSpeed does not broadcast: the stage must build it the same everywhere.
    ranks = [json.loads((tmp_path / f"checksums-rank{r}.json").read_text()) for r in (0, 1)]
    assert set(ranks[0]) == {"toy", "toy-resumed", "tokenizer", "llm"}
    assert set(ranks[0]["tokenizer"]) == {"start", "end"} and "vq.quantizer.codebook" in ranks[0]["tokenizer"]["start"]
    for run, phases in ranks[0].items():
        for phase, digests in phases.items():
            differ = sorted(k for k in digests if digests[k] != ranks[1][run][phase].get(k))
            assert not differ, f"{run}/{phase}: {len(differ)} weights differ between the processes, e.g. {differ[:3]}"

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["zero_stage"] == zero_stage and result["world_size"] == 2
    if zero_stage == 3:
        assert result["partitioned"], "ZeRO-3 should have sharded the parameters"
    # a stage with partitioned_init loads its LLM already split under ZeRO-3 (whole below it)
    assert result["llm_partitioned_at_build"] is (zero_stage == 3)
    assert result["export_keys_match"]  # frozen weights and buffers included
    assert result["export_max_diff"] == 0.0
    full, resumed = result["losses_full"], result["losses_resumed"]
    assert len(full) == 4 and all(math.isfinite(x) for x in full)
    assert resumed == full
    ckpts = tmp_path / "resumed" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-00000004"
    assert (ckpts / "step-00000004" / "deepspeed").is_dir() and (tmp_path / "full" / "final" / "model.safetensors").is_file()


def test_shm_op_workaround_is_scoped_and_guarded(monkeypatch, caplog):
    """The DeepSpeed op-table change lasts only while the process group starts, and a DeepSpeed whose internals
    moved gets a warning instead of a crash."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    from vqrae.train.distributed import _skip_cpu_shm_allreduce_build

    monkeypatch.delenv("VQRAE_DS_SHM_OP", raising=False)
    name = ShareMemCommBuilder.NAME
    table = {name: True, "cpu_adam": True}
    monkeypatch.setattr(deepspeed.ops, "__compatible_ops__", table, raising=False)  # no compiler probing
    with _skip_cpu_shm_allreduce_build():
        assert table == {name: False, "cpu_adam": True}
    assert table == {name: True, "cpu_adam": True}
    with pytest.raises(KeyError), _skip_cpu_shm_allreduce_build():
        raise KeyError("restored on errors too")
    assert table[name] is True

    monkeypatch.delattr(ShareMemCommBuilder, "NAME")  # a DeepSpeed that renamed things
    with caplog.at_level("WARNING", logger="vqrae.train.distributed"), _skip_cpu_shm_allreduce_build():
        pass
    assert table == {name: True, "cpu_adam": True}
    assert "op table is not what vqrae expects" in caplog.text
