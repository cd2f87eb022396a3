"""Pixel metrics on uint8 images (data range 255), per image: what reconstruction papers report."""

from __future__ import annotations

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) floats in [0, 1] -> the uint8 values an image file would hold, as float64 for the metrics."""
    return (images.detach().clamp(0, 1) * 255).round().double()


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, (B,), on uint8-rounded images; identical images give +inf."""
    if reference.shape != reconstruction.shape:
        raise ValueError(f"shape mismatch: {tuple(reference.shape)} vs {tuple(reconstruction.shape)}")
    mse = (to_uint8(reference) - to_uint8(reconstruction)).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(255.0**2 / mse)


def mean_psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """PSNR of a set of images as reconstruction papers (and `vqrae eval reconstruction`) report it: `psnr` per
    image, then the mean over the images whose PSNR is finite (identical images carry no mean); +inf (a 0-d
    tensor) when every image is reproduced exactly. The training log's `psnr` is this, on each batch."""
    values = psnr(reference, reconstruction)
    finite = values[torch.isfinite(values)]
    return finite.mean() if finite.numel() else values.new_tensor(float("inf"))
