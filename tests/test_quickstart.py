"""The README's main job, `vqrae quickstart`, end to end at toy sizes (--smoke): every step from rendering to the
report, resume by reusing finished steps, an interrupted training step resuming from its checkpoint, and --fresh."""

from __future__ import annotations

import json

from vqrae.cli import quickstart
from vqrae.cli.cli import main
from vqrae.unified_model import UnifiedModel

STEPS = [s.name for s in quickstart.STEPS]


def test_quickstart_smoke_runs_end_to_end_and_resumes(tmp_path, capsys, monkeypatch):
    # the first run is stopped by an error in the chat step: everything before it is kept
    def broken_chat(q):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(quickstart.STEPS[STEPS.index("chat")], "run", broken_chat)
    assert main(["quickstart", "--smoke", "--out", str(tmp_path)]) != 0
    state = json.loads((tmp_path / "quickstart.json").read_text())
    assert list(state["steps"]) == STEPS[: STEPS.index("chat")]
    monkeypatch.undo()
    capsys.readouterr()

    assert main(["quickstart", "--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("[skip]") == STEPS.index("chat") and "vqrae train" not in out
    state = json.loads((tmp_path / "quickstart.json").read_text())
    assert list(state["steps"]) == STEPS and all(s["seconds"] >= 0 for s in state["steps"].values())
    res = state["results"]
    for stage in ("stage1", "stage2"):
        m = res["eval-tokenizer"][stage]
        assert m["images"] > 0 and m["psnr"] > 5 and 0 < m["utilization"] <= 1 and "shape_accuracy" in m
        assert (tmp_path / f"eval-{stage}" / "grid.png").is_file()
    assert 0 < res["eval-tokenizer"]["stage2"]["feature_cosine"] <= 1
    assert (tmp_path / "reconstruction.png").is_file()
    vqa = res["eval-understanding"]
    assert 0 <= vqa["overall_acc"] <= 1 and vqa["questions"] > 0
    assert vqa["shuffled_images"]["questions"] == vqa["questions"]
    gen = res["eval-generation"]
    assert 0 <= gen["overall"] <= 1 and gen["images"] == 6 and set(gen["tags"]) >= {"single_object", "position"}
    assert (tmp_path / "generated.png").is_file()
    assert res["chat"]["turns"] and (tmp_path / "chat" / "transcript.md").is_file()
    # the trained models load by path, and the report holds every figure and picture it names
    UnifiedModel.from_pretrained(str(tmp_path / "unified-sft" / "final"))
    report = (tmp_path / "report.md").read_text()
    for needle in ("## Time per step", "PSNR", "VQA", "| shuffled |", "GenEval-style", "Scripted chat", "loss_curves.png",
                   "generated.png", "eval-stage2/grid.png", "vqrae chat --model"):
        assert needle in report, needle
    for png in ("loss_curves.png", "generated.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert "total" in out and "vqrae chat --model" in out

    # a third run reuses everything; --fresh starts over (here: refuses a folder that is not a quickstart's)
    assert main(["quickstart", "--smoke", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("[skip]") == len(STEPS)
    other = tmp_path / "not-a-quickstart"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["quickstart", "--smoke", "--fresh", "--out", str(other)]) == 2
    assert (other / "keep.txt").read_text() == "mine"


def test_interrupted_training_step_resumes_from_its_checkpoint(tmp_path, monkeypatch, caplog):
    """A quickstart training step stopped after a checkpoint continues from it on the next run (resume=auto)."""
    smoke = [o for o in quickstart.SMOKE["encoder-pretrain"] if not o.startswith(("save_every", "max_steps"))]
    monkeypatch.setitem(quickstart.SMOKE, "encoder-pretrain", smoke)
    q = quickstart.Quickstart(tmp_path, smoke=True)
    common = ["data=shapes", "val_data=shapes", "data_num=64", "save_every=2", "keep_last=1"]
    assert q.train("encoder-pretrain", "encoder", [*common, "max_steps=4"])["step"] == 4
    with caplog.at_level("INFO", logger="vqrae.train.engine"):
        assert q.train("encoder-pretrain", "encoder", [*common, "max_steps=6"])["step"] == 6
    assert "(step 4)" in caplog.text


def test_p4_profile_until_the_tokenizer(tmp_path, capsys):
    """--configs shapes-tiny-p4 trains every stage from that folder (4-px patches: 256 codes per image); --until stops
    after the named step, and the folder remembers its profile."""
    from vqrae.tokenizer import load_vqrae

    args = ["quickstart", "--smoke", "--configs", "shapes-tiny-p4", "--until", "eval-tokenizer", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    state = json.loads((tmp_path / "quickstart.json").read_text())
    assert list(state["steps"]) == STEPS[: STEPS.index("eval-tokenizer") + 1] and state["configs"] == "shapes-tiny-p4"
    assert "configs/shapes-tiny-p4/tokenizer-stage2.yaml" in out and "vqrae reconstruct --tokenizer" in out
    vq = load_vqrae(str(tmp_path / "tokenizer-stage2" / "final"))
    assert vq.patch_size == 4 and vq.num_tokens == 256 and vq.config.quantizer == "patch-kmeans"
    assert "shape_accuracy" in state["results"]["eval-tokenizer"]["stage2"]
    # the same folder with the other profile is refused, not mixed
    assert main(["quickstart", "--smoke", "--until", "lm", "--out", str(tmp_path)]) == 2
    assert "--configs shapes-tiny-p4" in capsys.readouterr().err
