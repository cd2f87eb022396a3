"""`vqrae eval patch-ceiling`: K-means over raw pixel patches, the yardstick for a tokenizer's grid and codebook."""

import json

import pytest
import torch

from vqrae.cli.cli import main
from vqrae.eval.patch_ceiling import fit_patch_codebook, patchify, quantize_patches, unpatchify


def test_patchify_round_trip_and_exact_codebook():
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 3, 16, 16, generator=g)
    assert torch.equal(unpatchify(patchify(pixels, 4), 3, 16, 16, 4), pixels)
    # images tiled from two flat 4x4 patches: K=2 finds both, and the quantized images are the images
    tiles = torch.tensor([[0.1, 0.5, 0.9], [0.8, 0.2, 0.3]])
    which = torch.randint(0, 2, (5, 4, 4), generator=g)
    flat = tiles[which].permute(0, 3, 1, 2)  # (5, 3, 4, 4): one colour per cell
    images = flat.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    centroids = fit_patch_codebook(images, 4, 2)
    recon, codes = quantize_patches(images, centroids, 4)
    assert torch.allclose(recon, images, atol=1e-6) and codes.shape == (5 * 16,)
    # K=1 cannot: the mean patch
    assert not torch.allclose(quantize_patches(images, fit_patch_codebook(images, 4, 1), 4)[0], images, atol=1e-2)
    with pytest.raises(ValueError, match="exceeds the 80 training patches"):
        fit_patch_codebook(images, 4, 81)
    with pytest.raises(ValueError, match="patch size 5 does not divide"):
        patchify(images, 5)


def test_cli_small_patches_keep_shapes_large_ones_do_not(tmp_path, capsys):
    out = tmp_path / "pc"
    args = ["eval", "patch-ceiling", "--data", "shapes", "--train-data", "shapes", "--patch", "4,16",
            "--codebook-size", "64", "--num", "24", "--train-num", "60", "--out", str(out)]
    assert main(args) == 0
    rows = {r["patch"]: r for r in json.loads((out / "summary.json").read_text())}
    assert rows[4]["tokens"] == 256 and rows[16]["tokens"] == 16
    assert rows[4]["psnr"] > rows[16]["psnr"] + 2
    assert rows[4]["shape_accuracy"] > rows[16]["shape_accuracy"] + 0.4
    assert rows[4]["shape_accuracy_originals"] > 0.95 and 0 < rows[4]["perplexity"] <= 64
    assert (out / "patch4_k64.png").is_file() and "GenEval rec/orig" in capsys.readouterr().out
    assert main([*args[:6], "--patch", "5", "--out", str(out)]) == 2
    assert "does not divide the image size 64" in capsys.readouterr().err


def test_tokenizer_rows_say_where_shapes_are_lost(tmp_path, capsys):
    """A random tiny tokenizer (32 px, patch 8, K=64): its features carry its patches (a per-token MLP draws them
    far better than the mean patch), a code table of its own training codes beats its untrained decoder, and the
    CLI prints and saves the three rows next to the pixel K-means ones."""
    from vqrae.tokenizer import VQRAE
    from vqrae.tokenizer.testing import tiny_vqrae_config

    torch.manual_seed(0)
    VQRAE(tiny_vqrae_config()).save_pretrained(tmp_path / "tok")
    out = tmp_path / "pc"
    args = ["eval", "patch-ceiling", "--data", "shapes", "--train-data", "shapes", "--size", "32", "--patch", "8",
            "--codebook-size", "1,64", "--num", "12", "--train-num", "60", "--tokenizer", str(tmp_path / "tok"),
            "--probe-steps", "100", "--out", str(out)]
    assert main(args) == 0
    rows = {r["source"]: r for r in json.loads((out / "summary.json").read_text())}
    assert set(rows) == {"pixel k-means", "tok: decoder", "tok: code table", "tok: feature MLP"}
    text = capsys.readouterr().out
    assert "tok: code table" in text and "tok: feature MLP" in text
    summary = json.loads((out / "summary.json").read_text())
    mean_patch = next(r for r in summary if r["source"] == "pixel k-means" and r["codebook_size"] == 1)
    assert rows["tok: feature MLP"]["psnr"] > mean_patch["psnr"] + 1.0
    assert rows["tok: code table"]["psnr"] > rows["tok: decoder"]["psnr"] + 1.0
    assert rows["tok: feature MLP"]["perplexity"] is None and rows["tok: code table"]["perplexity"] > 1
    assert (out / "tok-code-table.png").is_file()
    assert main([*args[:-4], "--size", "64", "--out", str(out)]) == 2  # a 32-px tokenizer on 64-px images
    assert "takes 32-px images" in capsys.readouterr().err
