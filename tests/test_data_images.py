"""data/images.py: the one loader (modes, EXIF, corrupt files) and the one transform."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vqrae.data.images import image_to_tensor, load_image, tensor_to_pil


def _left_red_right_blue(w: int = 40, h: int = 20) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(arr, "RGB")


def test_exif_orientation_is_applied(tmp_path):
    img = _left_red_right_blue()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    img.save(path, quality=95, exif=exif)
    out = load_image(path)
    assert out.size == (20, 40)  # portrait once oriented
    arr = np.asarray(out).astype(int)
    # Rotating the stored image 90 degrees clockwise puts its left (red) half on top.
    assert arr[5, 10, 0] > 200 and arr[5, 10, 2] < 60
    assert arr[35, 10, 2] > 200 and arr[35, 10, 0] < 60


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16", "1"])
def test_modes_become_rgb(tmp_path, mode):
    rgb = _left_red_right_blue()
    if mode == "RGBA":
        img = rgb.convert("RGBA")
        a = np.asarray(img).copy()
        a[:, :5, 3] = 0  # transparent strip -> white
        img = Image.fromarray(a, "RGBA")
    elif mode == "LA":
        img = Image.fromarray(np.dstack([np.full((20, 40), 10, np.uint8), np.full((20, 40), 0, np.uint8)]), "LA")
    elif mode == "I;16":
        img = Image.fromarray(np.full((20, 40), 65535, np.uint16))
    else:
        img = rgb.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (40, 20)
    arr = np.asarray(out).astype(int)
    if mode == "RGBA":
        assert (arr[:, :5] == 255).all() and arr[0, 10, 0] == 255 and arr[0, 10, 1] == 0
    if mode == "LA":
        assert (arr == 255).all()  # fully transparent -> white, not the dark gray underneath
    if mode == "I;16":
        assert (arr == 255).all()  # 16-bit white stays white (rescaled, not clipped)
    if mode in ("P", "CMYK"):
        assert arr[0, 0, 0] > 200 and arr[0, 39, 2] > 200


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.jpg").write_text("hello, not an image")
    with pytest.raises(ValueError, match="text.jpg"):
        load_image(tmp_path / "text.jpg")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match="trunc.jpg"):
        load_image(tmp_path / "trunc.jpg")
    buf = io.BytesIO()
    _left_red_right_blue().save(buf, "PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[:-30])
    with pytest.raises(ValueError, match="trunc.png"):
        load_image(tmp_path / "trunc.png")
    # Bytes input works, with the caller's name in messages.
    assert load_image(buf.getvalue(), name="shard/0001.png").size == (40, 20)
    with pytest.raises(ValueError, match="shard/bad"):
        load_image(b"garbage", name="shard/bad")


def test_image_to_tensor_resize_crop_flip():
    img = _left_red_right_blue(80, 40)
    t = image_to_tensor(img, None)
    assert t.shape == (3, 40, 80) and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    t = image_to_tensor(img, 20)
    assert t.shape == (3, 20, 20)
    # Center crop of a red|blue image straddles the boundary.
    assert t[0, 10, 2] > 0.9 and t[2, 10, 17] > 0.9
    t = image_to_tensor(img, 20, crop="none")
    assert t.shape == (3, 20, 40)
    g = torch.Generator().manual_seed(0)
    crops = {tuple(image_to_tensor(img, 20, crop="random", generator=g)[:, 0, :].argmax(0).tolist()) for _ in range(20)}
    assert len(crops) > 1  # random crops move
    flipped = [image_to_tensor(img, None, flip=True, generator=g)[0, 0, 0].item() for _ in range(40)]
    assert 0.0 in flipped and 1.0 in flipped  # both orientations occur
    a = image_to_tensor(img, 20, crop="random", flip=True, generator=torch.Generator().manual_seed(3))
    b = image_to_tensor(img, 20, crop="random", flip=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="crop"):
        image_to_tensor(img, 20, crop="middle")


def test_tensor_to_pil_roundtrip():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 9, 3), dtype=np.uint8))
    t = image_to_tensor(img, None)
    assert np.array_equal(np.asarray(tensor_to_pil(t)), np.asarray(img))
    assert np.array_equal(np.asarray(tensor_to_pil(t[None])), np.asarray(img))
    out = np.asarray(tensor_to_pil(torch.tensor([[[-1.0, 2.0]]]).expand(3, 1, 2)))
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255
    with pytest.raises(ValueError, match="shape"):
        tensor_to_pil(torch.zeros(2, 3, 4, 4))
