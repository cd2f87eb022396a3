"""What a codebook over raw pixel patches keeps: the yardstick for a tokenizer's token grid and codebook size.

K-means (K centroids, Lloyd's iterations) on the raw P x P patches of training images; every test patch is replaced
by its nearest centroid, and the result is measured as `vqrae eval reconstruction` measures a tokenizer: PSNR, SSIM
and, on ShapesWorld images, the detector's per-object shape / colour / box accuracy and the GenEval-style score of
the reconstructions against the originals'. A nearest-code tokenizer with that grid and K whose codes had learned
the pixel-optimal patches would score about this, whatever its decoder; so when a tokenizer falls short of the goal
here, its patch or its K must change, not its training. Issue 11 found it this way: 8-px patches keep 62% of the
ShapesWorld shapes at K=512, 4-px patches 96%.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B * H/p * W/p, 3 * p * p), patches in row-major order."""
    b, c, h, w = pixels.shape
    if h % patch or w % patch:
        raise ValueError(f"patch size {patch} does not divide the {h}x{w} images")
    x = pixels.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, c * patch * patch)


def unpatchify(patches: torch.Tensor, batch: int, height: int, width: int, patch: int) -> torch.Tensor:
    x = patches.reshape(batch, height // patch, width // patch, 3, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(batch, 3, height, width)


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    return torch.cat([torch.cdist(x[i:i + chunk], centroids).argmin(1) for i in range(0, len(x), chunk)])


def fit_patch_codebook(pixels: torch.Tensor, patch: int, codebook_size: int, iters: int = 15,
                       seed: int = 0) -> torch.Tensor:
    """K-means centroids (K, 3*p*p) of the patches of `pixels` (N, 3, H, W); empty clusters are reseeded."""
    x = patchify(pixels, patch)
    if codebook_size > len(x):
        raise ValueError(f"codebook size {codebook_size} exceeds the {len(x)} training patches")
    g = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=g)[:codebook_size]].clone()
    for _ in range(iters):
        assign = _nearest(x, centroids)
        counts = torch.bincount(assign, minlength=codebook_size).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        reseed = x[torch.randint(len(x), (codebook_size,), generator=g)]
        centroids = torch.where((counts == 0)[:, None], reseed, sums / counts.clamp_min(1)[:, None])
    return centroids


def quantize_patches(pixels: torch.Tensor, centroids: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every patch replaced by its nearest centroid: (B, 3, H, W) -> images (B, 3, H, W) and codes (B * h * w,)."""
    b, _, h, w = pixels.shape
    codes = _nearest(patchify(pixels, patch), centroids)
    return unpatchify(centroids[codes], b, h, w, patch), codes


def _pixels(dataset: Dataset, batch_size: int) -> torch.Tensor:
    from vqrae.data.readers import collate

    batches = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out = [b["pixels"] for b in batches]
    if not out:
        raise ValueError("the training data set holds no image")
    return torch.cat(out)


def patch_ceiling(train: Dataset, test: Dataset, patches: list[int], codebook_sizes: list[int], iters: int = 15,
                  seed: int = 0, batch_size: int = 50, grid_dir: str | Path | None = None,
                  progress: bool = True) -> list[dict]:
    """One row per (patch, K): PSNR, SSIM, codebook perplexity and the ShapesWorld fidelity figures."""
    from tqdm.auto import tqdm

    from vqrae.data.readers import collate

    from .fidelity import ObjectFidelity, RecordLookup
    from .metrics import psnr
    from .reconstruction import _measure_fidelity, save_grid, ssim

    train_pixels = _pixels(train, batch_size)
    test_batches = list(DataLoader(test, batch_size=batch_size, shuffle=False, collate_fn=collate))  # read once
    if not test_batches:
        raise ValueError("the test data set holds no image")
    rows = []
    for patch in patches:
        for k in codebook_sizes:
            centroids = fit_patch_codebook(train_pixels, patch, k, iters, seed)
            objects, lookup, used = ObjectFidelity(), RecordLookup(), torch.zeros(k)
            psnrs, ssims, first = [], [], None
            for batch in tqdm(test_batches, desc=f"patch {patch}, K={k}", disable=not progress):
                pixels = batch["pixels"]
                recon, codes = quantize_patches(pixels, centroids, patch)
                recon = recon.clamp(0, 1)
                used += torch.bincount(codes, minlength=k)
                psnrs.append(psnr(pixels, recon))
                ssims.append(ssim(pixels, recon))
                records = batch.get("record") or [lookup(n) if isinstance(n, str) else None for n in batch["name"]]
                _measure_fidelity(objects, None, pixels, recon, pixels, None, records)
                first = first or (pixels, recon)
            p = used / used.sum()
            finite = torch.cat(psnrs)[torch.isfinite(torch.cat(psnrs))]
            row = {"patch": patch, "codebook_size": k, "tokens": int(pixels.shape[-2] // patch) ** 2,
                   "images": int(sum(len(x) for x in psnrs)), "psnr": float(finite.mean()),
                   "ssim": float(torch.cat(ssims).mean()),
                   "perplexity": float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())), **objects.result()}
            if grid_dir is not None:
                save_grid(*first, Path(grid_dir) / f"patch{patch}_k{k}.png")
            logger.info("patch %d, K=%d: PSNR %.2f, shape accuracy %s", patch, k, row["psnr"],
                        row.get("shape_accuracy"))
            rows.append(row)
    return rows
