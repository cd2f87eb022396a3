"""The README's main job, `vqrae quickstart`, end to end at toy sizes (--smoke), and its resume-by-skipping."""

from __future__ import annotations

import json

from vqrae.cli.cli import main


def test_quickstart_smoke_runs_end_to_end_and_resumes(tmp_path, capsys):
    assert main(["quickstart", "--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "quickstart.json").read_text())
    for stage in ("stage1", "stage2"):
        m = results[stage]
        assert m["images"] > 0 and m["psnr"] > 5 and 0 < m["utilization"] <= 1
        assert (tmp_path / f"eval-{stage}" / "grid.png").is_file()
    assert 0 < results["stage2"]["feature_cosine"] <= 1
    assert (tmp_path / "reconstruction.png").is_file() and "PSNR:" in out
    # a second run finds every result on disk and skips straight to the evaluation
    assert main(["quickstart", "--smoke", "--out", str(tmp_path)]) == 0
    again = capsys.readouterr().out
    assert again.count("[skip]") == 4 and "[run] vqrae train" not in again
