"""The one image loader and the one image transform of the project.

Every reader in `data/` (folders, `datasets` on disk, webdataset shards), the tokenizer and the CLI go through
`load_image` -> `image_to_tensor`, so every image is decoded, oriented, converted and resized the same way.

- `load_image(src)`: a path, raw bytes or a binary file object -> PIL RGB, EXIF orientation applied, alpha composited
  on white. Missing path -> FileNotFoundError; anything that is not a complete decodable image (zero bytes,
  truncated, corrupt, not an image) -> `UnreadableImage` (a ValueError) with a one-line message naming the file. It
  never returns a partially decoded image (we rely on PIL's default `ImageFile.LOAD_TRUNCATED_IMAGES = False`).
  Readers skip exactly these two (bad input); anything else is a bug and propagates.
- `image_to_tensor(img, size, crop, flip, generator)`: resize the short side (bicubic, antialiased), crop, flip,
  -> (3, H, W) float32 in [0, 1].
- `tensor_to_pil(t)`: (3, H, W) or (1, 3, H, W) in [0, 1] -> PIL RGB.
- `image_grid(images, columns)`: PIL images or (3, H, W) tensors -> one PIL image, row-major (the one grid builder:
  generation grids, reconstruction grids, original | reconstruction pairs).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageSource = str | os.PathLike | bytes | bytearray | BinaryIO

CROPS = ("center", "random", "none")

# Modes PIL can convert to RGB directly without losing meaning (no alpha, 8 bits per channel or a colour model).
_DIRECT_MODES = {"RGB", "L", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}


class UnreadableImage(ValueError):
    """An image that cannot be decoded completely (empty, truncated, corrupt, not an image): bad input."""


def _describe(src: ImageSource, name: str | None) -> str:
    if name is not None:
        return str(name)
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return getattr(src, "name", None) or "<image bytes>"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white (what a viewer shows, and what a caption
    describes); 16-bit and float grayscale are rescaled, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")  # resolves the palette and its transparency entry, if any
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grayscale (PNG/TIFF): PIL's convert("L") would clip everything above 255 to white.
        arr = np.asarray(img).astype(np.float32) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        scale = 255.0 if np.nanmax(arr) <= 1.0 else 1.0  # float images in [0, 1] or already in [0, 255]
        arr = np.nan_to_num(arr * scale)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in _DIRECT_MODES:
        return img.convert("RGB")
    return img.convert("RGBA").convert("RGB")  # anything exotic: let PIL try, errors surface as ValueError


def load_image(src: ImageSource, *, name: str | None = None) -> Image.Image:
    """Decode an image completely and return it as RGB with its EXIF orientation applied.

    `src` is a path, the encoded bytes, or a binary file object; `name` is what error messages call it (defaults
    to the path). Raises FileNotFoundError for a missing path and UnreadableImage (a ValueError) for anything
    undecodable.
    """
    label = _describe(src, name)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(f"image not found: {label}")
        if path.is_dir():
            raise UnreadableImage(f"not an image file (a directory): {label}")
        if path.stat().st_size == 0:
            raise UnreadableImage(f"empty image file (0 bytes): {label}")
        fp: Path | BinaryIO = path  # PIL opens and closes it
    elif isinstance(src, (bytes, bytearray)):
        if len(src) == 0:
            raise UnreadableImage(f"empty image (0 bytes): {label}")
        fp = io.BytesIO(src)
    else:
        fp = src
    try:
        with warnings.catch_warnings():
            # A huge image is a bomb warning, a ludicrous one an error: both are the file's fault, not a crash.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                im.load()  # decode everything now: truncation must fail here, not later in a worker
                im = ImageOps.exif_transpose(im)
                return to_rgb(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"not a readable image: {label} ({type(exc).__name__})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as exc:
        # PIL reports truncation as OSError and corrupt headers/chunks with a zoo of exception types.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnreadableImage(f"corrupt or truncated image: {label} ({reason})") from exc


def image_to_tensor(
    img: Image.Image,
    size: int | None,
    crop: str = "center",
    flip: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PIL image -> (3, H, W) float32 in [0, 1].

    `size`: resize the short side to `size` (bicubic, antialiased), then crop to size x size with `crop`
    ("center", "random" with offsets from `generator`, or "none" to keep the aspect ratio). `size=None` keeps the
    image as it is. `flip=True` flips horizontally with probability 0.5 (drawn from `generator`).
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if size is not None and int(size) <= 0:
        raise ValueError(f"size must be a positive integer or None, got {size!r}")
    img = to_rgb(img)
    if size is not None:
        size = int(size)
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        if crop != "none":
            if crop == "center":
                left, top = (new_w - size) // 2, (new_h - size) // 2
            else:
                left = int(torch.randint(0, new_w - size + 1, (1,), generator=generator))
                top = int(torch.randint(0, new_h - size + 1, (1,), generator=generator))
            img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    if flip and bool(torch.rand((1,), generator=generator) < 0.5):
        t = t.flip(-1)
    return t.contiguous()


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) tensor in [0, 1] -> PIL RGB (values clamped, then rounded to 8 bits)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"tensor_to_pil expects a torch.Tensor, got {type(t).__name__}")  # noqa: TRY004
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"tensor_to_pil expects shape (3, H, W) or (1, 3, H, W), got {tuple(t.shape)}")
    arr = t.detach().float().cpu().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).contiguous().numpy(), "RGB")


def image_grid(images: Sequence[Image.Image | torch.Tensor | None] | torch.Tensor, columns: int | None = None,
               padding: int = 0, background: float = 1.0) -> Image.Image:
    """Lay images out row-major in a grid of `columns` (default ceil(sqrt(n))) -> one PIL RGB image.

    `images`: PIL images and/or (3, H, W) tensors in [0, 1] (or one (N, 3, H, W) tensor), all the same size; a
    `None` is an empty cell. `padding` pixels of `background` (0 black .. 1 white) separate the cells and frame the
    grid; cells after the last image are background too. The grid is min(columns, n) cells wide.
    Built on `torchvision.utils.make_grid`.
    """
    from torchvision.utils import make_grid

    cells = list(images)
    if not cells or all(c is None for c in cells):
        raise ValueError("image_grid needs at least one image")
    if columns is None:
        columns = math.ceil(math.sqrt(len(cells)))
    if int(columns) < 1 or padding < 0:
        raise ValueError(f"image_grid: columns must be >= 1 and padding >= 0, got {columns} and {padding}")
    tensors: list[torch.Tensor | None] = []
    for k, c in enumerate(cells):
        if c is None:
            tensors.append(None)
            continue
        t = image_to_tensor(c, None) if isinstance(c, Image.Image) else c
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[0] != 3:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"image_grid: image {k} must be a PIL image or a (3, H, W) tensor, got {got}")
        tensors.append(t.detach().float().cpu().clamp(0.0, 1.0))
    shapes = {tuple(t.shape) for t in tensors if t is not None}
    if len(shapes) != 1:
        raise ValueError(f"image_grid: the images differ in size: {sorted(shapes)}")
    blank = torch.full(shapes.pop(), float(background))
    batch = torch.stack([blank if t is None else t for t in tensors])
    grid = make_grid(batch, nrow=int(columns), padding=padding, pad_value=float(background))
    return tensor_to_pil(grid)


__all__ = ["CROPS", "ImageSource", "UnreadableImage", "image_grid", "image_to_tensor", "load_image", "tensor_to_pil",
           "to_rgb"]

