"""`vqrae scale` and vqrae.eval.scaling: the power-law fit recovers known laws (with noise, with an outlier), the
bootstrap interval covers the true exponent, the compute frontier is the lower envelope; a two-size sweep of toy
models runs (each size one `vqrae train unified-gen` command), writes its table and plots, skips finished sizes,
resumes an interrupted one, and `--only` per size + `--collect` gives the same table as the whole sweep.

The sweep's training commands are run by the real `vqrae` CLI in this process (a fresh Python per size costs ~10 s
of imports on our shared CPUs), after checking they are the `python -m vqrae.cli train unified-gen ...` processes
`vqrae scale` launches; the resumed run is launched as a real separate process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from vqrae.cli import cli
from vqrae.cli import scale as scale_cli
from vqrae.eval.scaling import bootstrap_exponent, compute_frontier, fit_power_law
from vqrae.train import sweep as sweep_mod
from vqrae.unified_model.testing import save_tiny_parts

N = np.geomspace(2e4, 2e7, 8)
SPAWN = subprocess.run  # the real one (tests patch the attribute on the module)


@pytest.mark.parametrize("a, b, c", [(40.0, 0.3, 1.8), (900.0, 0.55, 2.5), (3.0, 0.12, 0.4)])
def test_fit_recovers_a_b_c_from_noisy_points(a, b, c):
    exact = fit_power_law(N, a * N**-b + c)
    assert (exact.a, exact.b, exact.c) == (pytest.approx(a, rel=1e-3), pytest.approx(b, rel=1e-3),
                                          pytest.approx(c, abs=1e-3))
    rng = np.random.default_rng(0)
    y = (a * N**-b + c) * (1 + 0.003 * rng.standard_normal(N.size))
    law = fit_power_law(N, y)
    assert law.b == pytest.approx(b, rel=0.15) and law.c == pytest.approx(c, abs=0.1)
    assert law(N) == pytest.approx(a * N**-b + c, rel=0.01)  # the curve itself, where a and c trade off
    interval = bootstrap_exponent(N, y, samples=60, seed=1)
    assert interval["low"] <= b <= interval["high"] and interval["low"] < interval["high"]


def test_robust_fit_resists_one_bad_run_and_too_few_sizes_are_an_error():
    y = 40.0 * N**-0.3 + 1.8
    y[3] += 0.8  # one diverged run
    plain, robust = fit_power_law(N, y), fit_power_law(N, y, robust=True)
    assert abs(robust.b - 0.3) < 0.03 < abs(plain.b - 0.3)
    with pytest.raises(ValueError, match="at least 3 distinct x values, got 2"):
        fit_power_law([1e4, 1e4, 1e5], [3.0, 3.1, 2.0])
    with pytest.raises(ValueError, match="must be > 0"):
        fit_power_law([0, 1e4, 1e5], [3.0, 3.1, 2.0])


def test_compute_frontier_is_the_lower_envelope():
    points = [{"flops": 1.0, "loss": 5.0}, {"flops": 2.0, "loss": 4.0}, {"flops": 2.5, "loss": 4.5},
              {"flops": 3.0, "loss": 3.5}, {"flops": 4.0, "loss": 3.6}, {"flops": 5.0, "loss": 3.0}]
    assert [p["flops"] for p in compute_frontier(points)] == [1.0, 2.0, 3.0, 5.0]


# ------------------------------------------------------------------------------------------- the sweep

SWEEP = """\
output_dir: {out}
stage_config: shapes-tiny/unified-gen
overrides: ["data=[{{task: t2i, data: shapes, num: 8}}]", batch_size=4, max_steps=3, val_num=4, warmup_steps=0,
            save_every=0, log_every=1, eval_every=2, max_length=256]
text_tokenizer: {parts}/llm
vqrae: {parts}/vqrae
architecture: qwen3
bootstrap: 20
sizes:
  - {{name: a, hidden_size: 16, num_layers: 1, num_heads: 2}}
  - {{name: b, hidden_size: 32, num_layers: 2, num_heads: 4, num_kv_heads: 2}}
geneval: {{per_tag: 1, num_images: 1, batch_size: 8}}
"""


class InProcess:
    """Stands in for subprocess.run: checks the command is `python -m vqrae.cli train ...` and runs the CLI here."""

    def __init__(self):
        self.commands: list[list[str]] = []

    def __call__(self, cmd, check=False):
        self.commands.append(cmd)
        assert cmd[:5] == [sys.executable, "-m", "vqrae.cli", "train", "unified-gen"]
        return subprocess.CompletedProcess(cmd, cli.main(cmd[3:]))


def scale(monkeypatch, *args) -> InProcess:
    runner = InProcess()
    monkeypatch.setattr(sweep_mod.subprocess, "run", runner)
    assert cli.main(["scale", *args]) == 0
    return runner


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Tiny parts, a sweep config, and the whole two-size sweep run once."""
    root = tmp_path_factory.mktemp("scaling")
    save_tiny_parts(root / "parts")
    config = root / "sweep.yaml"
    config.write_text(SWEEP.format(out=root / "whole", parts=root / "parts"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared CPUs: one thread is faster, and the same in every run
    with pytest.MonkeyPatch.context() as mp:
        runner = scale(mp, "--config", str(config))
    yield root, config, runner
    torch.set_num_threads(threads)


def rows(folder):
    return json.loads((folder / "scaling.json").read_text())["runs"]


def test_two_size_sweep_trains_each_size_once_and_writes_table_and_plots(sweep):
    root, _, runner = sweep
    out = root / "whole"
    assert [next(a for a in c if a.startswith("init=")) for c in runner.commands] == \
        [f"init={out / 'a' / 'init'}", f"init={out / 'b' / 'init'}"]
    assert all(f"output_dir={out / n / 'train'}" in c for n, c in zip("ab", runner.commands))
    table = rows(out)
    assert [r["name"] for r in table] == ["a", "b"]
    a, b = table
    assert a["params_non_embedding"] < b["params_non_embedding"] and a["params_total"] < b["params_total"]
    assert a["steps"] == b["steps"] == 3 and a["tokens"] == pytest.approx(b["tokens"])  # same tokens
    assert b["flops"] / a["flops"] == pytest.approx(
        json.loads((out / "b" / "result.json").read_text())["params_compute"]
        / json.loads((out / "a" / "result.json").read_text())["params_compute"])
    for r in table:
        assert np.isfinite(r["val_loss"]) and r["loss_source"] == "eval/loss" and 0 <= r["geneval"] <= 1
        assert (out / r["name"] / "geneval" / "summary.json").is_file()
    report = json.loads((out / "scaling.json").read_text())
    assert report["fit"] is None and "at least 3 distinct" in report["fit_note"]  # two sizes: no law
    assert "| a | 1 | 16 |" in (out / "scaling.md").read_text()
    for png in ("loss_vs_params.png", "loss_vs_flops.png", "score_vs_params.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = json.loads((out / "a" / "result.json").read_text())["curve"]
    assert [p["step"] for p in curve] == [2, 3] and curve[0]["flops"] < curve[1]["flops"]


def test_rerun_skips_finished_sizes_and_resumes_an_interrupted_one(sweep, monkeypatch, capsys):
    root, config, _ = sweep
    out = root / "whole"
    before = {n: (out / n / "result.json").read_text() for n in "ab"}

    def refuse(cmd, check=False):
        raise AssertionError(f"a finished size was trained again: {cmd}")

    monkeypatch.setattr(sweep_mod.subprocess, "run", refuse)
    assert cli.main(["scale", "--config", str(config)]) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 2
    assert {n: (out / n / "result.json").read_text() for n in "ab"} == before
    # b interrupted after its last checkpoint: no final/, no record. The engine resumes at step 3 and only exports.
    import shutil

    shutil.rmtree(out / "b" / "train" / "final")
    (out / "b" / "result.json").unlink()
    trained = (out / "b" / "train" / "metrics.jsonl").read_text()
    launched = []  # this one in a real separate process, as `vqrae scale` launches every size

    def real(cmd, check=False):
        launched.append(cmd)
        return SPAWN(cmd, check=check)

    monkeypatch.setattr(sweep_mod.subprocess, "run", real)
    assert cli.main(["scale", "--config", str(config)]) == 0
    assert len(launched) == 1 and f"init={out / 'b' / 'init'}" in launched[0]
    assert (out / "b" / "train" / "final" / "config.json").is_file()
    assert (out / "b" / "train" / "metrics.jsonl").read_text() == trained  # no step retrained
    assert json.loads((out / "b" / "result.json").read_text())["val_loss"] == pytest.approx(
        json.loads(before["b"])["val_loss"])


def test_only_each_size_then_collect_gives_the_whole_sweeps_table(sweep, monkeypatch, capsys):
    root, config, _ = sweep
    split = root / "split"
    for name in ("b", "a"):  # any order, any machine
        runner = scale(monkeypatch, "--config", str(config), "--out", str(split), "--only", name)
        assert len(runner.commands) == 1 and f"init={split / name / 'init'}" in runner.commands[0]
        assert not (split / "scaling.json").exists()
    assert scale(monkeypatch, "--config", str(config), "--out", str(split), "--collect").commands == []
    whole, parts = rows(root / "whole"), rows(split)
    assert [r["name"] for r in parts] == [r["name"] for r in whole]
    for w, p in zip(whole, parts):
        assert p.keys() == w.keys()
        for key, value in w.items():
            assert p[key] == (pytest.approx(value, rel=1e-5) if isinstance(value, float) else value), key
    assert "| b | 2 | 32 |" in capsys.readouterr().out


# -------------------------------------------------------------------------------- config and launching


def test_bad_sweep_configs_fail_with_one_line(tmp_path, capsys):
    base = SWEEP.format(out=tmp_path / "out", parts=tmp_path / "parts")
    cases = [
        (base.replace("num_kv_heads: 2", "num_kv_heads: 3"), "num_heads 4 must divide by num_kv_heads 3"),
        (base.replace("name: b", "name: a"), "names must be unique"),
        (base.replace("hidden_size: 16,", "hidden_size: 16, depth: 2,"), "unknown keys ['depth']"),
        (base + "launcher: torchrun --nproc_per_node 2\n", "starts 2 processes but 'processes' is 1"),
        (base + "budget: compute\n", "budget compute needs flops > 0"),
    ]
    for i, (text, message) in enumerate(cases):
        (tmp_path / f"c{i}.yaml").write_text(text)
        assert cli.main(["scale", "--config", str(tmp_path / f"c{i}.yaml"), "--collect"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "ok.yaml").write_text(base)
    assert cli.main(["scale", "--config", str(tmp_path / "ok.yaml"), "--only", "c"]) == 2
    assert "--only c: no such size (sizes: a, b)" in capsys.readouterr().err


def test_launcher_and_compute_budget(tmp_path, monkeypatch):
    text = SWEEP.format(out=tmp_path / "out", parts=tmp_path / "parts")
    (tmp_path / "c.yaml").write_text(text + "launcher: torchrun --nproc_per_node 2\nprocesses: 2\n"
                                     "budget: compute\nflops: 1.0e+9\nmin_steps: 1\n")
    cfg = scale_cli.load_scaling_config(str(tmp_path / "c.yaml"), [])
    sweep = scale_cli.Sweep(cfg)
    sweep._profile = {"tokens_per_sample": 50.0}  # as data_profile measures it
    a, b = cfg.size_specs
    (steps_a, batch), (steps_b, _) = sweep.steps(a, 10_000), sweep.steps(b, 40_000)
    assert batch == 4 * 2  # batch_size x processes
    assert (steps_a, steps_b) == (round(1e9 / (6 * 10_000 * batch * 50)), round(1e9 / (6 * 40_000 * batch * 50)))
    assert steps_a > 3 * steps_b  # the same FLOPs: 4x the parameters, ~1/4 of the steps
    seen = []
    monkeypatch.setattr(sweep_mod.subprocess, "run",
                        lambda cmd, check=False: seen.append(cmd) or subprocess.CompletedProcess(cmd, 1))
    monkeypatch.setattr(sweep_mod.shutil, "which", lambda name: sys.executable)  # a file standing in for `vqrae`
    with pytest.raises(ValueError, match="size a: training exited with 1"):
        sweep.train(a, steps_a)
    assert seen[0][:4] == ["torchrun", "--nproc_per_node", "2", sys.executable]
    assert seen[0][4:6] == ["train", "unified-gen"] and f"max_steps={steps_a}" in seen[0]
