"""The projector: VQRAE continuous features (width d) -> LLM embedding space (width h), as in LLaVA-1.5.

With `merge` s > 1, each s x s block of the feature grid is concatenated into one vector of width s*s*d before the
projector (InternVL's pixel shuffle, Qwen2-VL's patch merger): an image fills N / s^2 LLM positions instead of N,
with nothing averaged away. On ShapesWorld p4 (a 16 x 16 grid), s = 2 reads an image in 64 positions, not 256.
"""

from __future__ import annotations

import torch
from torch import nn

PROJECTOR_TYPES = ("mlp2x_gelu", "linear", "conv_mlp")


class ConvProjector(nn.Module):
    """`conv_mlp`: Linear(s*s*d, h) -> GELU -> a residual block of two 3x3 convolutions over the (merged) grid ->
    GELU -> Linear(h, h). Honeybee's C-Abstractor idea at its smallest: each position also sees its neighbours,
    so what spans several positions (an object's outline: its shape) is read where the object is, instead of
    being left for the LLM's attention to assemble from separate positions. Input (M, n, width) in raster order
    over `grid`; a (K, width) input (the code rows' init) is read as K one-position images."""

    def __init__(self, width: int, hidden_size: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.fc_in = nn.Linear(width, hidden_size)
        self.conv1 = nn.Conv2d(hidden_size, hidden_size, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_size, hidden_size, 3, padding=1)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.dim() == 2
        if flat:
            x = x.unsqueeze(1)
        m, n, _ = x.shape
        gh, gw = (1, 1) if n == 1 else self.grid
        if n != gh * gw:
            raise ValueError(f"conv_mlp projector: {n} positions do not fill its {self.grid[0]}x{self.grid[1]} grid")
        h = self.act(self.fc_in(x))
        img = h.transpose(1, 2).reshape(m, -1, gh, gw)
        img = img + self.conv2(self.act(self.conv1(img)))
        out = self.fc_out(self.act(img.reshape(m, -1, n).transpose(1, 2)))
        return out.squeeze(1) if flat else out


def build_projector(projector_type: str, feature_dim: int, hidden_size: int, merge: int = 1,
                    grid: tuple[int, int] | list[int] = (0, 0)) -> nn.Module:
    """`mlp2x_gelu`: Linear(s*s*d, h) -> GELU -> Linear(h, h) (LLaVA-1.5's default); `linear`: Linear(s*s*d, h);
    `conv_mlp`: see `ConvProjector` (`grid`: the feature grid, before merging)."""
    width = merge * merge * feature_dim
    if projector_type == "linear":
        return nn.Linear(width, hidden_size)
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(width, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
    if projector_type == "conv_mlp":
        return ConvProjector(width, hidden_size, (grid[0] // merge, grid[1] // merge))
    raise ValueError(f"projector_type must be one of {PROJECTOR_TYPES}, got {projector_type!r}")


def merge_features(feats: torch.Tensor, grid: tuple[int, int] | list[int], merge: int) -> torch.Tensor:
    """(M, gh*gw, d) in raster order -> (M, (gh/s)*(gw/s), s*s*d): each s x s block's vectors side by side (row by
    row inside the block), the blocks in raster order."""
    if merge == 1:
        return feats
    gh, gw = grid
    m, n, d = feats.shape
    if n != gh * gw:
        raise ValueError(f"features hold {n} vectors per image, the {gh}x{gw} grid needs {gh * gw}")
    x = feats.reshape(m, gh // merge, merge, gw // merge, merge, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(m, (gh // merge) * (gw // merge), merge * merge * d)


def _linears(projector: nn.Module) -> list[nn.Linear]:
    return [m for m in projector.modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def calibrate_projector(projector: nn.Module, inputs: torch.Tensor, target_radius: float) -> dict[str, float]:
    """Fold the data's statistics into a fresh projector (before alignment), as the code rows are placed
    (`vocab.init_code_embeddings`).

    The VQRAE's features share one large common direction (on ShapesWorld p4 the mean cosine between the 256
    positions of one image is 0.89, and 0.96 after a random projector) and are ~25x the norm of the LLM's text
    embeddings, so at the start of alignment every image position looks alike to attention and the small
    per-position part (which object is where, its shape) is hard to find. The first Linear is rescaled to see
    standardised inputs ((x - mean) / std per input dimension, over `inputs`), and the last so that the outputs are
    centred with a mean norm of `target_radius` (the text rows' spread around their mean). Pure weight surgery on
    the existing Linears: the projector's architecture and checkpoint keys stay as they are.

    `inputs` (M, n, width) or (n, width): projector inputs (merged features). Returns the mean cosine between
    outputs before and after, and their mean norm after.
    """
    first, last = _linears(projector)[0], _linears(projector)[-1]
    x = inputs.to(device=first.weight.device, dtype=torch.float32)
    run = lambda: projector(x.to(first.weight.dtype)).float().reshape(-1, last.out_features)  # noqa: E731
    before = _mean_cosine(run())
    flat = x.reshape(-1, x.shape[-1])
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    w = first.weight.float() / std
    first.bias.copy_((first.bias.float() - w @ mean).to(first.bias.dtype))
    first.weight.copy_(w.to(first.weight.dtype))
    y = run()
    centre = y.mean(0)
    scale = target_radius / (y - centre).norm(dim=-1).mean().clamp_min(1e-12)
    last.weight.mul_(scale)
    last.bias.copy_(((last.bias.float() - centre) * scale).to(last.bias.dtype))
    after = run()
    return {"mean_cosine_before": before, "mean_cosine_after": _mean_cosine(after),
            "radius": float(after.norm(dim=-1).mean())}


def _mean_cosine(y: torch.Tensor, n: int = 512) -> float:
    u = torch.nn.functional.normalize(y[:n], dim=-1)
    sim = u @ u.T
    k = len(u)
    return float((sim.sum() - sim.diagonal().sum()) / max(k * (k - 1), 1))
