"""The projector: VQRAE continuous features (width d) -> LLM embedding space (width h), as in LLaVA-1.5."""

from __future__ import annotations

from torch import nn

PROJECTOR_TYPES = ("mlp2x_gelu", "linear")


def build_projector(projector_type: str, feature_dim: int, hidden_size: int) -> nn.Module:
    """`mlp2x_gelu`: Linear(d, h) -> GELU -> Linear(h, h) (LLaVA-1.5's default); `linear`: Linear(d, h)."""
    if projector_type == "linear":
        return nn.Linear(feature_dim, hidden_size)
    if projector_type == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(feature_dim, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
    raise ValueError(f"projector_type must be one of {PROJECTOR_TYPES}, got {projector_type!r}")
