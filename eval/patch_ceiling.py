"""What a codebook over raw pixel patches keeps: the yardstick for a tokenizer's token grid and codebook size.

K-means (K centroids, Lloyd's iterations) on the raw P x P patches of training images; every test patch is replaced
by its nearest centroid, and the result is measured as `vqrae eval reconstruction` measures a tokenizer: PSNR, SSIM
and, on ShapesWorld images, the detector's per-object shape / colour / box accuracy and the GenEval-style score of
the reconstructions against the originals'. A nearest-code tokenizer with that grid and K whose codes had learned
the pixel-optimal patches would score about this, whatever its decoder; so when a tokenizer falls short of the goal
here, its patch or its K must change, not its training. Issue 11 found it this way: 8-px patches keep 62% of the
ShapesWorld shapes at K=512, 4-px patches 96%.

Given a tokenizer (`tokenizer_rows`), three more rows at its own patch and K say where it loses what its patches
could keep: its codes through its decoder (what `vqrae eval reconstruction` measures); its codes through a *code
table*, each code drawn as the mean training patch it stands for (no decoder, no context: a table is the best a
per-token decoder can do with these codes, so decoder ~ table means the codes are the limit, not the decoder); and a
small MLP trained to draw each token's own patch from its continuous feature (what the encoder's features keep: the
ceiling of any quantizer on them, and of the understanding path).
"""

from __future__ import annotations

import logging
import math
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


def _measure(test_batches: list, reconstruct, codebook_size: int, desc: str, grid_path: Path | None,
             progress: bool) -> dict:
    """`reconstruct(i, pixels) -> (images, codes or None)` over the test batches (i: the batch's index): PSNR, SSIM,
    perplexity, fidelity."""
    from tqdm.auto import tqdm

    from .fidelity import ObjectFidelity, RecordLookup
    from .metrics import psnr
    from .reconstruction import _measure_fidelity, save_grid, ssim

    objects, lookup, used = ObjectFidelity(), RecordLookup(), torch.zeros(codebook_size)
    psnrs, ssims, first = [], [], None
    for i, batch in enumerate(tqdm(test_batches, desc=desc, disable=not progress)):
        pixels = batch["pixels"]
        recon, codes = reconstruct(i, pixels)
        recon = recon.clamp(0, 1)
        if codes is not None:
            used += torch.bincount(codes.reshape(-1), minlength=codebook_size)
        psnrs.append(psnr(pixels, recon))
        ssims.append(ssim(pixels, recon))
        records = batch.get("record") or [lookup(n) if isinstance(n, str) else None for n in batch["name"]]
        _measure_fidelity(objects, None, pixels, recon, pixels, None, records)
        first = first or (pixels, recon)
    if grid_path is not None:
        save_grid(*first, grid_path)
    finite = torch.cat(psnrs)[torch.isfinite(torch.cat(psnrs))]
    p = used / used.sum().clamp_min(1)
    return {"images": int(sum(len(x) for x in psnrs)), "psnr": float(finite.mean()),
            "ssim": float(torch.cat(ssims).mean()),
            "perplexity": float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())) if used.sum() else None,
            **objects.result()}


def read_images(train: Dataset, test: Dataset, batch_size: int = 50) -> tuple[torch.Tensor, list[dict]]:
    """The training images as one tensor and the test set as collated batches, read once for every row."""
    from vqrae.data.readers import collate

    train_pixels = _pixels(train, batch_size)
    test_batches = list(DataLoader(test, batch_size=batch_size, shuffle=False, collate_fn=collate))
    if not test_batches:
        raise ValueError("the test data set holds no image")
    return train_pixels, test_batches


def patch_ceiling(train_pixels: torch.Tensor, test_batches: list[dict], patches: list[int],
                  codebook_sizes: list[int], iters: int = 15, seed: int = 0, grid_dir: str | Path | None = None,
                  progress: bool = True) -> list[dict]:
    """One row per (patch, K) (data from `read_images`): PSNR, SSIM, codebook perplexity, ShapesWorld fidelity."""
    rows = []
    for patch in patches:
        for k in codebook_sizes:
            centroids = fit_patch_codebook(train_pixels, patch, k, iters, seed)
            grid = Path(grid_dir) / f"patch{patch}_k{k}.png" if grid_dir is not None else None
            row = {"source": "pixel k-means", "patch": patch, "codebook_size": k,
                   "tokens": (test_batches[0]["pixels"].shape[-2] // patch) ** 2,
                   **_measure(test_batches, lambda _, x, c=centroids, p=patch: quantize_patches(x, c, p), k,
                              f"patch {patch}, K={k}", grid, progress)}
            logger.info("patch %d, K=%d: PSNR %.2f, shape accuracy %s", patch, k, row["psnr"],
                        row.get("shape_accuracy"))
            rows.append(row)
    return rows


@torch.no_grad()
def _tokens(vq, pixels: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous features (N * h * w, d) and codes (N * h * w,) of images (N, 3, H, W), tokens in raster order."""
    feats, codes = [], []
    for i in range(0, len(pixels), batch_size):
        f = vq.encode(pixels[i:i + batch_size].to(vq.device))
        feats.append(f.reshape(-1, f.shape[-1]).float().cpu())
        codes.append(vq.quantizer.lookup(f).reshape(-1).cpu())
    return torch.cat(feats), torch.cat(codes)


def tokenizer_rows(vq, train_pixels: torch.Tensor, test_batches: list[dict], probe_steps: int = 2000, seed: int = 0,
                   batch_size: int = 50, grid_dir: str | Path | None = None, name: str = "tokenizer",
                   progress: bool = True) -> list[dict]:
    """The tokenizer's decoder, code-table and feature-MLP rows (see the module docstring) at its patch and K, on
    data from `read_images`."""
    from torch import nn
    from tqdm.auto import tqdm

    vq = vq.eval()
    patch, k = vq.patch_size, vq.config.codebook_size
    side = test_batches[0]["pixels"].shape[-1]
    if side != vq.config.image_size or train_pixels.shape[-1] != side:
        raise ValueError(f"{name} takes {vq.config.image_size}-px images, the data is {side} px (--size)")
    feats, codes = _tokens(vq, train_pixels, batch_size)
    targets = patchify(train_pixels, patch)
    counts = torch.bincount(codes, minlength=k)[:, None].float()
    table = torch.zeros(k, targets.shape[1]).index_add_(0, codes, targets) / counts.clamp_min(1)
    table[counts[:, 0] == 0] = targets.mean(0)  # a code no training patch used: the mean patch, not black

    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded MLP weights without touching the caller's global RNG
        torch.manual_seed(seed)
        mlp = nn.Sequential(nn.Linear(feats.shape[1], 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(),
                            nn.Linear(512, targets.shape[1]))
    opt = torch.optim.AdamW(mlp.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(probe_steps, 1))))
    for _ in tqdm(range(probe_steps), desc=f"{name}: feature MLP", disable=not progress):
        idx = torch.randint(len(feats), (4096,), generator=g)
        loss = torch.nn.functional.mse_loss(mlp(feats[idx]), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    mlp.eval()
    final_loss = float(loss.detach()) if probe_steps > 0 else float('nan')

    test_tokens = [_tokens(vq, b["pixels"], batch_size) for b in test_batches]  # encoded once for the three rows

    def by_decoder(i, x):
        c = test_tokens[i][1]
        return vq.decode(c.view(len(x), -1).to(vq.device)).float().cpu(), c

    def by_table(i, x):
        c = test_tokens[i][1]
        return unpatchify(table[c], len(x), x.shape[-2], x.shape[-1], patch), c

    def by_mlp(i, x):
        return unpatchify(mlp(test_tokens[i][0]), len(x), x.shape[-2], x.shape[-1], patch), None

    rows = []
    for source, fn in (("decoder", by_decoder), ("code table", by_table), ("feature MLP", by_mlp)):
        grid = Path(grid_dir) / f"{name}-{source.replace(' ', '-')}.png" if grid_dir is not None else None
        with torch.no_grad():
            row = {"source": f"{name}: {source}", "patch": patch, "codebook_size": k,
                   "tokens": (side // patch) ** 2, **_measure(test_batches, fn, k, f"{name}: {source}", grid,
                                                                progress)}
        if source == "feature MLP":
            row["probe_steps"], row["probe_loss"] = probe_steps, final_loss
        rows.append(row)
    return rows
