"""`seed` fixes a run: the same command twice (one process, plain PyTorch) trains the same tokenizer, loss for loss
and weight for weight, whatever the process did before (the model is built after seeding, not when the stage is
made)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vqrae.tokenizer.testing import save_tiny_siglip
from vqrae.train.metrics import read_metrics


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder")
    save_tiny_siglip(folder)
    return folder


def records(out) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in read_metrics(out / "metrics.jsonl")]


def test_same_command_twice_gives_the_same_run(encoder_dir, tmp_path):
    from vqrae.cli.cli import main

    cfg = tmp_path / "stage1.yaml"
    cfg.write_text(f"encoder: {encoder_dir}\ndata: shapes\ndata_num: 16\nval_data: shapes\nval_num: 4\n"
                   "batch_size: 4\nmax_steps: 3\nlog_every: 1\nlr: 2.0e-3\nperceptual_weight: 0.1\n"
                   "model:\n  codebook_size: 32\n  codebook_dim: 32\n")
    runs = {name: tmp_path / name for name in ("a", "b")}
    for out in runs.values():
        torch.rand(7)  # whatever the process drew before must not matter
        assert main(["train", "tokenizer-stage1", "--config", str(cfg), f"output_dir={out}"]) == 0
    a, b = (records(runs[n]) for n in ("a", "b"))
    assert [r["step"] for r in a if "loss" in r] == [1, 2, 3]
    assert a == b  # every logged number, evaluation included, exactly
    wa, wb = (load_file(runs[n] / "final" / "model.safetensors") for n in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
