"""How much pixel information survives quantization: a linear read-out of each patch's mean colour.

PSNR says how good a reconstruction is, not where the information was lost. This probe fits a least-squares
linear map from each token's vector to the mean colour of its image patch, once from the continuous encoder features
and once from the quantized code vectors, and reports the held-out RMS error in 8-bit levels. A large gap between
the two means the codes, not the encoder, drop the colour; a large error from the features means the encoder never
kept it. (The decoder sees neighbouring tokens too, so its own error can be lower than the codes' probe.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class PatchColourProbe:
    """Collects (features, code vectors, patch colours) per token, up to `max_tokens`, then fits and scores."""

    def __init__(self, max_tokens: int = 16384, seed: int = 0):
        self.max_tokens = max_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.features, self.codes, self.colours = [], [], []
        self.count = 0

    @property
    def full(self) -> bool:
        """True once max_tokens are held: callers can skip computing code vectors for further batches."""
        return self.count >= self.max_tokens

    def update(self, pixels: torch.Tensor, features: torch.Tensor, code_vectors: torch.Tensor) -> None:
        """pixels (B,3,H,W) in [0,1]; features and code_vectors (B, h*w, d) in raster order."""
        if self.full:
            return
        b, n, d = features.shape
        grid = math.isqrt(n)
        colours = F.adaptive_avg_pool2d(pixels.float(), grid).flatten(2).transpose(1, 2).reshape(-1, 3) * 255
        keep = torch.randperm(b * n, generator=self.generator)[: self.max_tokens - self.count]
        keep = keep.to(features.device)  # select on the device, copy only the kept tokens
        self.features.append(features.reshape(-1, d)[keep].float().cpu())
        self.codes.append(code_vectors.reshape(-1, d)[keep].float().cpu())
        self.colours.append(colours[keep].cpu())
        self.count += len(keep)

    def result(self) -> dict[str, float]:
        """{"colour_probe_features": rms, "colour_probe_codes": rms} in 8-bit levels; {} with too few tokens
        (the fit half must hold 4 tokens per weight, or the read-out would memorise instead of generalise)."""
        half = self.count // 2
        if not self.count or half < 4 * (self.features[0].shape[1] + 1):
            return {}
        colours = torch.cat(self.colours).double()
        out = {}
        for name, parts in (("features", self.features), ("codes", self.codes)):
            x = torch.cat(parts).double()
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
            weights = torch.linalg.lstsq(x[:half], colours[:half]).solution
            out[f"colour_probe_{name}"] = float((x[half:] @ weights - colours[half:]).pow(2).mean().sqrt())
        return out
