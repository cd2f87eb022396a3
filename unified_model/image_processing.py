"""VQRAEImageProcessor: images -> the `pixel_values` a VQRAE (and the unified model) takes, as a Hugging Face image
processor (`save_pretrained` writes `preprocessor_config.json`; `AutoImageProcessor.from_pretrained(folder)` loads it
once `vqrae` is imported).

It is the project's one image loader and transform (`vqrae.data.images`) behind the image-processor interface:
- a path or encoded bytes: `load_image` (EXIF orientation applied, alpha composited on white, RGB), then
  `image_to_tensor(img, size, crop="center")` (short side resized to `size`, bicubic antialiased, centre crop);
- a PIL image: the same, with `load_image`'s EXIF orientation and colour conversion applied to it;
- a numpy array: (H, W, C) or (H, W) uint8 as a PIL image; float (H, W, 3) or (3, H, W) in [0, 1] as a tensor;
- a torch tensor (3, H, W) (or a batch (B, 3, H, W)) in [0, 1]: resized to size x size (bicubic, antialiased,
  clamped); uint8 tensors are scaled by 1/255 first.
The output `pixel_values` (B, 3, S, S) are floats in [0, 1]: no mean/std normalisation, the VQRAE normalises inside.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoImageProcessor
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from vqrae.data.images import image_to_tensor, load_image, to_rgb

from .configuration import UnifiedConfig

ImageInput = Image.Image | str | os.PathLike | bytes | np.ndarray | torch.Tensor

_EXIF_ORIENTATION = 0x0112


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    """`load_image`'s treatment of a decoded image: EXIF orientation applied, then RGB (alpha on white)."""
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def _resize_tensor(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (3, size, size): what the unified processor has always done with tensors."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image tensor must be (3, H, W), got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    if tuple(image.shape[1:]) == (size, size):
        return image.float()
    image = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="bicubic", antialias=True,
                                           align_corners=False)
    return image[0].clamp(0, 1)


def _numpy_image(arr: np.ndarray, size: int) -> torch.Tensor:
    if arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 3, 4))):
        img = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
        return image_to_tensor(to_rgb(img), size, crop="center")
    if np.issubdtype(arr.dtype, np.floating) and arr.ndim == 3:
        if arr.shape[-1] == 3:
            arr = arr.transpose(2, 0, 1)
        return _resize_tensor(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), size)
    raise ValueError(f"a numpy image must be (H, W, C) or (H, W) uint8, or a float (H, W, 3) / (3, H, W) array in "
                     f"[0, 1]; got {arr.dtype} {arr.shape}")


def image_to_pixels(image: ImageInput, size: int) -> torch.Tensor:
    """One image (see the module docstring for the kinds accepted) -> (3, size, size) float in [0, 1]."""
    if isinstance(image, torch.Tensor):
        return _resize_tensor(image, size)
    if isinstance(image, np.ndarray):
        return _numpy_image(image, size)
    if isinstance(image, Image.Image):
        return image_to_tensor(_pil_to_rgb(image), size, crop="center")
    if isinstance(image, (str, os.PathLike, bytes, bytearray)):
        return image_to_tensor(load_image(image), size, crop="center")
    raise ValueError(f"an image must be a path, encoded bytes, a PIL image, a numpy array or a (3, H, W) tensor, got "
                     f"{type(image).__name__}")


def flatten_images(images: Any) -> list:
    """An image, a list of images, a list of lists (one per sample) or a (B, 3, H, W) tensor -> a flat list."""
    if images is None:
        return []
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        return [im for item in images for im in flatten_images(item)]
    return [images]


class VQRAEImageProcessor(BaseImageProcessor):
    r"""
    Args:
        size: the VQRAE's input resolution S: images come out (3, S, S).
    """

    model_input_names = ["pixel_values"]  # noqa: RUF012 (transformers' class attribute)

    def __init__(self, size: int = 256, **kwargs):
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        if isinstance(size, dict):  # {"height": S, "width": S} / {"shortest_edge": S}, as other processors write it
            values = {int(v) for v in size.values()}
            if len(values) != 1:
                raise ValueError(f"VQRAEImageProcessor takes square images, got size {size}")
            size = values.pop()
        if int(size) <= 0:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self.size = int(size)

    def fetch_images(self, image_url_or_urls):
        """Paths are opened with the project's loader (EXIF, alpha on white), never fetched as URLs."""
        return image_url_or_urls

    def preprocess(self, images, size: int | None = None, return_tensors: str | None = "pt",
                   **kwargs) -> BatchFeature:
        """Images (one, a list, a list per sample, or a (B, 3, H, W) tensor) -> `pixel_values` (B, 3, S, S)."""
        size = self.size if size is None else int(size)
        flat = flatten_images(images)
        if not flat:
            raise ValueError("no images given")
        pixels = torch.stack([image_to_pixels(im, size) for im in flat])
        if return_tensors == "np":
            return BatchFeature({"pixel_values": pixels.numpy()}, tensor_type="np")
        return BatchFeature({"pixel_values": pixels})

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "image_processor_type": type(self).__name__}


# `AutoImageProcessor` finds the class from a model folder (config.json of model_type "vqrae_unified") and, by the
# `image_processor_type` name in preprocessor_config.json, from a folder with no config.json (names are looked up
# among registered classes). One class serves both of transformers' backends.
AutoImageProcessor.register(
    UnifiedConfig,
    image_processor_classes={"pil": VQRAEImageProcessor, "torchvision": VQRAEImageProcessor},
    exist_ok=True,
)

__all__ = ["ImageInput", "VQRAEImageProcessor", "flatten_images", "image_to_pixels"]
