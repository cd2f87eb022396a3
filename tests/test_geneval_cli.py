"""`vqrae eval geneval` end to end: generation with a tiny model into the official layout (resumable), scoring,
score-only on a folder written here, the tokenizer ceiling, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vqrae.cli.cli import main
from vqrae.data.geneval import TAGS, build_prompt_set, read_geneval_metadata, write_jsonl
from vqrae.data.shapes import SHAPES

# The official prompt set lives in the workspace's read-only shared folder (beside the checkout, or at /work/shared
# where CI clones elsewhere); never copied into the repository.
_REL = Path("benchmarks") / "geneval" / "evaluation_metadata.jsonl"
_CANDIDATES = [Path(__file__).resolve().parents[2] / "shared" / _REL, Path("/work/shared") / _REL]
OFFICIAL = next((p for p in _CANDIDATES if p.is_file()), _CANDIDATES[-1])


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    import vqrae
    from vqrae.tokenizer.testing import tiny_vqrae_config
    from vqrae.unified_model.testing import tiny_unified_model

    root = tmp_path_factory.mktemp("geneval")
    tiny_unified_model().save_pretrained(root / "model")
    vqrae.VQRAE(tiny_vqrae_config()).save_pretrained(root / "tok")
    records = build_prompt_set(SHAPES, counts={t: 1 for t in TAGS}, seed=0)  # one prompt of each tag
    write_jsonl(root / "prompts.jsonl", records)
    return root, records


def run(*argv) -> int:
    return main(["eval", "geneval", *map(str, argv)])


def test_generate_score_and_resume(assets, capsys):
    root, records = assets
    out = root / "run"
    args = ["--model", root / "model", "--prompts", root / "prompts.jsonl", "--out", out, "--num-images", 2,
            "--batch-size", 4, "--device", "cpu"]
    assert run(*args) == 0
    text = capsys.readouterr().out
    assert "generated 6 prompts (0 already there)" in text and "overall" in text
    for i, rec in enumerate(records):  # the official layout
        folder = out / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == rec
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["tag"] for r in rows} == set(TAGS)
    assert all(set(r) >= {"filename", "correct", "reason", "metadata", "details"} for r in rows)
    assert all(r["reason"] for r in rows if not r["correct"])  # every failure says why
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tags"]) == set(TAGS) and 0 <= summary["overall"] <= 1
    assert summary["overall"] == pytest.approx(sum(v["score"] for v in summary["tags"].values()) / 6)
    assert "| **overall** |" in (out / "summary.md").read_text()
    if not all(r["correct"] for r in rows):
        assert (out / "failures.png").stat().st_size > 0
    # Resume: nothing to do; then a lost prompt folder is rewritten with the same images (seeds follow positions).
    before = (out / "00003" / "samples" / "0001.png").read_bytes()
    assert run(*args) == 0 and "generated 0 prompts (6 already there)" in capsys.readouterr().out
    (out / "00003" / "metadata.jsonl").unlink()
    assert run(*args) == 0 and "generated 1 prompts (5 already there)" in capsys.readouterr().out
    assert (out / "00003" / "samples" / "0001.png").read_bytes() == before
    # Another prompt file into the same folder is refused in one line.
    other = root / "other.jsonl"
    write_jsonl(other, build_prompt_set(SHAPES, counts={t: 1 for t in TAGS}, seed=5))
    assert run("--model", root / "model", "--prompts", other, "--out", out, "--num-images", 2) == 2
    assert "fresh --out" in capsys.readouterr().err


def test_score_only_and_ceiling(assets, capsys):
    from vqrae.eval.geneval.suite import render_reference_folder

    root, records = assets
    renders = render_reference_folder(records, root / "renders", 64, num_images=2)
    assert run("--images", renders, "--out", root / "scored") == 0
    summary = json.loads((root / "scored" / "summary.json").read_text())
    assert summary["overall"] >= 0.99 and summary["images"] == 12  # the renders satisfy their prompts
    assert not (root / "scored" / "failures.png").exists()
    capsys.readouterr()
    assert run("--reconstruct", root / "tok", "--prompts", root / "prompts.jsonl", "--out", root / "ceiling",
               "--num-images", 2) == 0
    assert "reconstructions" in capsys.readouterr().out
    ceiling = json.loads((root / "ceiling" / "ceiling.json").read_text())
    assert ceiling["renders"] >= 0.99 and 0 <= ceiling["reconstructions"] <= 1
    # the floor: unigram code noise through the same decoder, scored the same way, far below the renders
    assert 0 <= ceiling["noise"] < 0.5 and all("noise" in v for v in ceiling["tags"].values())
    assert (root / "ceiling" / "noise" / "00005" / "samples" / "0001.png").is_file()
    assert "unigram noise" in (root / "ceiling" / "ceiling.md").read_text()
    assert (root / "ceiling" / "reconstructions" / "00005" / "samples" / "0001.png").is_file()


def test_official_prompts_and_errors(assets, tmp_path, capsys):
    root, _ = assets
    assert len(read_geneval_metadata(OFFICIAL)) == 553
    # COCO prompts without local weights: one line naming the weights and where they go, before any generation.
    code = run("--model", root / "model", "--prompts", OFFICIAL, "--out", tmp_path / "coco",
               "--detector-weights", tmp_path / "m2f", "--clip-weights", tmp_path / "clip")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "mask2former" in err and "clip-vit-large-patch14" in err and not (tmp_path / "coco" / "00000").exists()
    assert run("--images", tmp_path / "missing") == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run("--images", tmp_path / "empty") == 2
    assert "no GenEval prompt folders" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tag": "counting", "include": [{"class": "star", "count": 2}], "prompt": "x"}\n')
    assert run("--model", root / "model", "--prompts", bad) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    assert run("--reconstruct", root / "tok", "--prompts", OFFICIAL, "--limit", 2, "--out", tmp_path / "c") == 2
    assert "ShapesWorld prompts" in capsys.readouterr().err
