"""The training engine in one process (plain PyTorch, CPU): learning, exact resume, accumulation, NaN stop,
per-group lrs, export, logs, and the `vqrae train` command."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from train_toy import SimulatedCrash, ToyConfig, ToyStage

import vqrae.train.engine
from vqrae.train import TrainingDiverged, load_config
from vqrae.train.engine import Engine
from vqrae.train.metrics import read_metrics
from vqrae.train.stages import get_stage, register_stage


def toy(out: Path, *overrides: str) -> ToyStage:
    return ToyStage(load_config(ToyConfig, None, [f"output_dir={out}", "log_every=1", *overrides]))


def run(out: Path, *overrides: str) -> Engine:
    engine = Engine(toy(out, *overrides))
    engine.run()
    return engine


def train_records(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def test_loss_falls_and_outputs_are_written(tmp_path):
    engine = run(tmp_path, "max_steps=60", "batch_size=16", "lr=1e-2", "dropout=0", "warmup_steps=5",
                 "eval_every=30")
    losses = [r["loss"] for r in train_records(tmp_path)]
    assert len(losses) == 60
    assert sum(losses[-5:]) < 0.3 * sum(losses[:5])
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "eval/mse" in r]
    assert [r["step"] for r in evals] == [30, 60] and evals[1]["eval/mse"] < evals[0]["eval/mse"]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "config.yaml").is_file()
    # final/ holds every weight, the frozen ones and buffers included, equal to the trained module's.
    exported = load_file(tmp_path / "final" / "model.safetensors")
    trained = engine.backend.module.state_dict()
    assert sorted(exported) == sorted(trained) and {"frozen.weight", "scale"} <= set(exported)
    assert all(torch.equal(exported[k], trained[k]) for k in trained)
    assert json.loads((tmp_path / "final" / "config.json").read_text())["max_steps"] == 60


def test_crash_and_resume_gives_the_uninterrupted_run(tmp_path, monkeypatch):
    # Dropout, an eval hook that draws random numbers, grad accumulation, a resume mid-epoch (4 steps per
    # epoch), and a checkpoint write that dies half-way: the resumed run must match an uninterrupted one exactly.
    common = ("max_steps=10", "batch_size=8", "grad_accum=2", "save_every=3", "eval_every=2", "lr=3e-3",
              "warmup_steps=2", "keep_last=3")
    full = run(tmp_path / "full", *common)

    with pytest.raises(SimulatedCrash):
        run(tmp_path / "resumed", *common, "crash_at=8")  # checkpoints at 3 and 6, dies in step 8
    assert [r["step"] for r in train_records(tmp_path / "resumed")][-1] == 7

    def killed_mid_write(folder, rank):  # the step-9 write dies after the model state, before the rest
        raise SimulatedCrash("killed while writing a checkpoint")

    monkeypatch.setattr(vqrae.train.engine, "save_rng", killed_mid_write)
    with pytest.raises(SimulatedCrash):
        run(tmp_path / "resumed", *common)  # resumes at 6, saves 9 ... killed midway
    assert (tmp_path / "resumed" / "checkpoints" / ".tmp-step-00000009").is_dir()
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text() == "step-00000006"
    monkeypatch.undo()

    resumed = run(tmp_path / "resumed", *common)  # resumes at 6 again and finishes
    assert not (tmp_path / "resumed" / "checkpoints" / ".tmp-step-00000009").exists()
    a, b = train_records(tmp_path / "full"), train_records(tmp_path / "resumed")
    assert [r["step"] for r in b] == list(range(1, 11))
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "samples_per_s"} == \
               {k: v for k, v in rb.items() if k != "samples_per_s"}
    evals = lambda out: [r for r in read_metrics(out / "metrics.jsonl") if "eval/mse" in r]
    assert evals(tmp_path / "full") == evals(tmp_path / "resumed")
    for k, v in full.backend.module.state_dict().items():
        assert torch.equal(v, resumed.backend.module.state_dict()[k]), k


def test_grad_accumulation_matches_the_large_batch(tmp_path):
    one = run(tmp_path / "one", "max_steps=6", "batch_size=8", "dropout=0", "lr=1e-2")
    two = run(tmp_path / "two", "max_steps=6", "batch_size=4", "grad_accum=2", "dropout=0", "lr=1e-2")
    la, lb = [r["loss"] for r in train_records(tmp_path / "one")], [r["loss"] for r in train_records(tmp_path / "two")]
    assert la == pytest.approx(lb, rel=1e-5)
    for k, v in one.backend.module.state_dict().items():
        assert torch.allclose(v, two.backend.module.state_dict()[k], atol=1e-6)


def test_parameter_groups_keep_their_own_lr(tmp_path):
    run(tmp_path, "max_steps=6", "lr=1e-2", "head_lr_scale=0.1", "warmup_steps=3")
    records = train_records(tmp_path)
    assert [r["lr/body"] for r in records[:3]] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2])
    assert all(r["lr/head"] == pytest.approx(0.1 * r["lr/body"]) for r in records)


def test_nan_loss_stops_naming_the_step_and_saves_nothing_broken(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5; .*Last good checkpoint: .*step-00000004"):
        run(tmp_path, "max_steps=10", "save_every=2", "nan_at=5")
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-00000002", "step-00000004"]
    assert not (tmp_path / "final").exists()
    state = torch.load(ckpts / "step-00000004" / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["diverged"] is True


def test_resume_policies_and_multi_process_guard(tmp_path, monkeypatch):
    run(tmp_path, "max_steps=2")
    with pytest.raises(ValueError, match=r"resume=never but .* already holds checkpoints \(latest: step-00000002\)"):
        run(tmp_path, "max_steps=4", "resume=never")
    with pytest.raises(FileNotFoundError, match="resume=.*nowhere is not a checkpoint folder"):
        run(tmp_path, "max_steps=4", f"resume={tmp_path / 'nowhere'}")
    engine = run(tmp_path / "fork", "max_steps=4", f"resume={tmp_path / 'checkpoints' / 'step-00000002'}")
    assert [r["step"] for r in train_records(tmp_path / "fork")] == [3, 4] and engine.resume_from.name.endswith("2")
    monkeypatch.setattr(ToyStage, "name", "other")
    with pytest.raises(ValueError, match="was written by stage 'toy', not 'other': choose another output_dir"):
        run(tmp_path, "max_steps=4")
    monkeypatch.undo()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="2 processes were launched but deepspeed is null"):
        run(tmp_path / "multi", "max_steps=2")


def test_hugging_face_model_exports_with_save_pretrained(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from vqrae.train import Stage

    class TinyLM(Stage):
        name = "tiny-lm"

        def build_model(self):
            return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))

        def train_dataset(self):
            ids = torch.randint(0, 64, (16, 12), generator=torch.Generator().manual_seed(0))
            return [{"input_ids": row, "labels": row} for row in ids]

        def loss(self, model, batch, step):
            return model(**batch).loss, {}

    from vqrae.train import TrainConfig

    engine = Engine(TinyLM(TrainConfig(output_dir=str(tmp_path), max_steps=3, batch_size=4, lr=1e-2)))
    engine.run()
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "final")
    trained = engine.backend.module.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())


def test_cli_trains_resumes_and_reports_errors_in_one_line(tmp_path, capsys):
    from vqrae.cli.cli import main

    register_stage(ToyStage)
    assert get_stage("toy") is ToyStage
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'run'}\nmax_steps: 3\nlog_every: 1\n")
    assert main(["train", "toy", "--config", str(cfg), "lr=1e-3"]) == 0
    assert "final weights:" in capsys.readouterr().out
    assert main(["train", "toy", "max_steps=5", "--config", str(cfg), "save_every=1"]) == 0  # resumes at 3
    records = train_records(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[3]["lr"] > 0  # the longer cosine applies at once, not the lr the first run ended with
    capsys.readouterr()

    for argv, message in [
        (["train", "toy", "--config", str(cfg), "lrr=1"], "unknown config key 'lrr' in override 'lrr=1' (did you mean 'lr'?)"),
        (["train", "nope", "--config", str(cfg)], "unknown training stage 'nope' (known: "),
        (["train", "toy", "--config", str(tmp_path / "missing.yaml")], "config file not found"),
        (["train", "toy", "--config", str(cfg), "--resume", "never"], "resume=never but"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("vqrae train: error: ") and message in err and err.count("\n") == 1, err

    assert main(["train", "toy", "--config", str(cfg), f"output_dir={tmp_path / 'nan'}", "nan_at=2"]) == 1
    last_line = capsys.readouterr().err.rstrip("\n").split("\n")[-1]  # after the progress bar
    assert last_line.startswith("vqrae train: loss is nan at step 2;") and "Last good checkpoint: none" in last_line

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "Resuming is automatic" in capsys.readouterr().out


def test_cudnn_attention_switch_is_restored_after_the_run(tmp_path, monkeypatch):
    """cudnn_attention=false turns torch's (process-wide) cuDNN attention off for the run only: the previous
    setting is back when training ends, also when it ends with an error."""
    seen = []
    loss = ToyStage.loss

    def spying_loss(self, model, batch, step):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return loss(self, model, batch, step)

    monkeypatch.setattr(ToyStage, "loss", spying_loss)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        for previous in (True, False):
            torch.backends.cuda.enable_cudnn_sdp(previous)
            seen.clear()
            run(tmp_path / f"ok-{previous}", "max_steps=2")
            assert seen == [False, False] and torch.backends.cuda.cudnn_sdp_enabled() is previous
        torch.backends.cuda.enable_cudnn_sdp(True)
        with pytest.raises(SimulatedCrash):
            run(tmp_path / "crash", "max_steps=3", "crash_at=2")
        assert torch.backends.cuda.cudnn_sdp_enabled() is True
        seen.clear()
        run(tmp_path / "on", "max_steps=1", "cudnn_attention=true")
        assert seen == [True]
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_plotting_and_the_train_command_leave_process_state_alone(tmp_path, monkeypatch):
    """The loss plot does not switch matplotlib's backend; `vqrae train` in a non-main process quiets the root
    logger for the run only."""
    import logging

    import matplotlib

    from vqrae.cli.cli import main
    from vqrae.train.metrics import plot_loss_curve

    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        (tmp_path / "m.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.0}\n')
        assert plot_loss_curve(tmp_path / "m.jsonl", tmp_path / "loss.png") is not None
        assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)

    register_stage(ToyStage)
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'run'}\nmax_steps: 1\n")
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.INFO)
    monkeypatch.setenv("RANK", "1")  # a non-main process of a launch (plain mode runs it as a group of one)
    assert main(["train", "toy", "--config", str(cfg)]) == 0
    assert root.level == logging.INFO


def test_non_finite_gradient_leaves_the_weights_untouched():
    """The engine stops on a NaN gradient norm; the plain backend must not have updated the weights first (a
    caller who catches TrainingDiverged still holds the last good model)."""
    from vqrae.train.backends import PlainBackend
    from vqrae.train.config import TrainConfig
    from vqrae.train.stage import param_groups

    module = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    backend = PlainBackend(module, param_groups(module, lr=0.1), TrainConfig(max_steps=2), torch.device("cpu"), False)
    module(torch.tensor([[float("nan"), 1.0, 2.0]])).sum().backward()
    norm = backend.step(boundary=True)
    assert not math.isfinite(norm)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert all(p.grad is None for p in module.parameters())
