"""`vqrae bench train-step` at toy size: it runs through the CLI, times both paths, and writes a JSON whose numbers
are positive, finite and consistent with each other (no timing thresholds: the machine is shared)."""

from __future__ import annotations

import json
import math

import pytest

from vqrae.cli.cli import main

TOY = ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--image-size", "32", "--codebook-size", "64",
       "--batch-size", "2", "--batches", "2", "--steps", "3", "--rounds", "2", "--warmup", "1"]


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_bench_writes_positive_finite_numbers_for_both_paths(tmp_path, capsys):
    out = tmp_path / "bench" / "train-step.json"
    assert main(["bench", "train-step", *TOY, "--task", "mixed", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["benchmark"], r["stage"], r["task"], r["device"], r["model"]) == (
        "train-step", "unified-sft", "mixed", "cpu", "random")
    assert 0 < r["trainable_parameters"] < r["parameters"]  # the VQRAE is frozen
    assert positive(r["tokens_per_step"])
    for path in ("bare", "engine"):
        p = r[path]
        for key in ("median_step_s", "min_step_s", "tokens_per_s", "median_cpu_step_s"):
            assert positive(p[key]), (path, key, p[key])
        assert len(p["block_step_s"]) == len(p["block_cpu_step_s"]) == 2  # one per round
        assert all(positive(t) for t in p["block_step_s"] + p["block_cpu_step_s"])
        assert p["min_step_s"] <= p["median_step_s"]
        assert p["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / p["median_step_s"], rel=1e-6)
    expected = 100 * (r["engine"]["median_step_s"] / r["bare"]["median_step_s"] - 1)
    assert r["overhead_pct"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert all(math.isfinite(r[k]) for k in ("paired_overhead_pct", "cpu_overhead_pct"))
    assert r["goal_met"] == (r["overhead_pct"] <= r["goal_pct"])
    pieces = r["breakdown_ms"]
    assert {"model.train()", "metric reduction + .tolist()", "lr scheduler.step()", "grad norm float()"} <= set(pieces)
    assert all(math.isfinite(v) and v >= 0 for v in pieces.values()) and positive(sum(pieces.values()))
    printed = capsys.readouterr().out
    assert "engine overhead" in printed and "tokens/s" in printed and str(out) in printed


def test_bench_runs_the_gen_stage_on_text_to_image(tmp_path):
    out = tmp_path / "gen.json"
    assert main(["bench", "train-step", *TOY, "--stage", "unified-gen", "--task", "t2i", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["stage"], r["task"]) == ("unified-gen", "t2i")
    # a text-to-image record at 32 px is its prompt + 16 codes + specials: more tokens than codes alone
    assert r["tokens_per_step"] > 2 * 16
    assert positive(r["bare"]["tokens_per_s"]) and positive(r["engine"]["tokens_per_s"])


@pytest.mark.parametrize(("args", "culprit"), [
    (["--steps", "0"], "--steps"),
    (["--steps", "2", "--rounds", "3"], "--rounds"),
    (["--image-size", "30"], "--image-size"),
    (["--stage", "unified-align", "--task", "t2i"], "--stage unified-align"),
])
def test_bad_arguments_are_one_line_errors_naming_them(args, culprit, tmp_path, capsys):
    assert main(["bench", "train-step", *args, "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert culprit in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_missing_model_folder_is_named(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    assert main(["bench", "train-step", "--model", str(missing), "--out", str(tmp_path / "x.json")]) == 2
    assert str(missing) in capsys.readouterr().err
