"""The unified stages under DeepSpeed ZeRO-2 and ZeRO-3 with 2 CPU processes (tests/unified_ds_worker.py): align
from an LLM + a tokenizer, SFT from align's export (partitioned at load under ZeRO-3), and the exported folder loads
with `UnifiedModel.from_pretrained` and gives the logits the sharded model gave."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqrae.unified_model import UnifiedModel
from vqrae.unified_model.testing import save_tiny_parts

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ds_config, sharded", [("zero2", False), ("zero3", True)])
def test_unified_stages_two_processes_export_loadable_folders(tmp_path, ds_config, sharded):
    save_tiny_parts(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "unified_ds_worker.py"), ds_config, str(tmp_path)]
    proc = subprocess.run(cmd, check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2 and result["partitioned"] is sharded
    ref = torch.load(tmp_path / "reference.pt")
    model = UnifiedModel.from_pretrained(tmp_path / "sft" / "final", dtype=torch.float32)
    assert [h["stage"] for h in model.training_history] == ["unified-align", "unified-sft"]
    with torch.no_grad():
        logits = model(**ref["batch"], return_logits=True).logits
    assert torch.allclose(logits, ref["logits"], atol=1e-4), (logits - ref["logits"]).abs().max()
