"""`vqrae reconstruct` end to end on a real photo, and its one-line errors with exit code 2."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from vqrae.cli.cli import main
from vqrae.tokenizer import VQRAE
from vqrae.tokenizer.testing import tiny_vqrae_config


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    torch.manual_seed(0)
    VQRAE(tiny_vqrae_config()).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage import data  # a real photo that ships inside an installed package

    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def test_reconstruct_writes_side_by_side_and_psnr(tok_dir, photo, tmp_path, capsys):
    out = tmp_path / "sub" / "pair.png"
    assert main(["reconstruct", "--tokenizer", str(tok_dir), "--image", str(photo), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resized" in printed and "center-cropped" in printed  # it says so
    psnr = float(printed.split("PSNR:")[1].split("dB")[0])
    pair = np.asarray(Image.open(out))
    assert pair.shape == (32, 64, 3)
    recon = pair[:, 32:].astype(np.float64)
    orig = pair[:, :32].astype(np.float64)
    expected = 10 * np.log10(255**2 / ((orig - recon) ** 2).mean())
    assert abs(psnr - expected) < 0.05  # the printed PSNR is the one of the written images


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_image(tok_dir, tmp_path, capsys):
    rc = main(["reconstruct", "--tokenizer", str(tok_dir), "--image", str(tmp_path / "nope.png"),
               "--out", str(tmp_path / "o.png")])
    assert rc == 2 and "nope.png" in _err(capsys)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_corrupt_image(tok_dir, photo, tmp_path, capsys, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(photo.read_bytes()[:2000] if content == "truncated" else content)
    rc = main(["reconstruct", "--tokenizer", str(tok_dir), "--image", str(bad), "--out", str(tmp_path / "o.png")])
    assert rc == 2 and "bad.png" in _err(capsys)
    assert not (tmp_path / "o.png").exists()


def test_wrong_tokenizer_folder(photo, tmp_path, capsys):
    for folder, needle in ((tmp_path / "missing", "not found"), (tmp_path, "no config.json")):
        rc = main(["reconstruct", "--tokenizer", str(folder), "--image", str(photo), "--out", str(tmp_path / "o.png")])
        assert rc == 2 and needle in _err(capsys)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "qwen2"}')
    rc = main(["reconstruct", "--tokenizer", str(other), "--image", str(photo), "--out", str(tmp_path / "o.png")])
    assert rc == 2 and "not a VQRAE tokenizer" in _err(capsys)


def test_wrong_size_with_no_resize(tok_dir, photo, tmp_path, capsys):
    rc = main(["reconstruct", "--tokenizer", str(tok_dir), "--image", str(photo), "--out", str(tmp_path / "o.png"),
               "--no-resize"])
    assert rc == 2 and "512x512" in _err(capsys)


def test_console_script_exit_code(tok_dir, tmp_path):
    exe = shutil.which("vqrae") or str(__import__("pathlib").Path(sys.executable).parent / "vqrae")
    res = subprocess.run([exe, "reconstruct", "--tokenizer", str(tok_dir), "--image", str(tmp_path / "x.jpg"),
                          "--out", str(tmp_path / "o.png")], capture_output=True, text=True, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("vqrae reconstruct: error:")
    help_res = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False)
    assert help_res.returncode == 0 and "reconstruct" in help_res.stdout
