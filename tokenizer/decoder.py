"""The ViT pixel decoder: it mirrors the encoder, with no convolutions.

Quantized features (B, N, d) -> linear to the decoder width -> + fixed 2-D sin-cos position embeddings ->
timm ViT blocks -> LayerNorm -> linear head to p*p*3 values per token -> unpatchify to (B, 3, h*p, w*p).
The position embeddings are computed for whatever grid arrives, so the decoder holds no resolution-sized table.

Initialisation (`ViTDecoder.reset_parameters`) is MAE's decoder init (He et al. 2022, the ViT/JAX convention that
timm calls "jax"): every linear weight xavier-uniform (qkv as one matrix), every bias zero, LayerNorm weight 1 and
bias 0. The decoder is trained from scratch and mirrors a ViT encoder, so it takes the init such ViTs are trained
with; xavier scales with each layer's fan-in and fan-out, so it stays sensible from width 32 to 1152, and the zero
head bias makes the first reconstructions zero-mean (mid-grey) images.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint


def sincos_2d(h: int, w: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """MAE-style fixed 2-D sin-cos embeddings, (h*w, dim): half the channels encode y, half x."""
    if dim % 4:
        raise ValueError(f"decoder width must be a multiple of 4 for 2-D sin-cos positions, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angles = coord[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).to(dtype)


def to_patches(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [0, 1] -> each token's patch (B, N, p*p*3) in [-1, 1], in the layout the decoder's head
    writes (its forward undoes exactly this): the target of the patch-kmeans quantizer's pixel head."""
    return rearrange(pixels * 2 - 1, "b c (h p) (w q) -> b (h w) (p q c)", p=patch_size, q=patch_size)


class ViTDecoder(nn.Module):
    def __init__(
        self,
        *,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        mlp_ratio: float = 4.0,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        # timm is imported here, not at the top: importing it costs more than a second (it pulls in wandb when that
        # is installed), and `import vqrae` / `vqrae --help` should not pay for a decoder nobody built yet.
        from timm.models.vision_transformer import Block

        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by its {num_heads} heads")
        self.patch_size = patch_size
        self.gradient_checkpointing = gradient_checkpointing
        self.embed = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, patch_size * patch_size * 3)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """MAE / ViT-JAX init (see the module docstring). Like `SimVQ.reset_parameters`: `torch.nn.init` looked up
        at call time (so transformers' loading can switch it off, and leaves tensors it loaded alone), and ZeRO-3
        partitioned placeholders skipped."""
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.weight.numel():
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight.numel():
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None,
                base: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, in_dim) -> (B, 3, h*p, w*p) in [0, 1] space (not clamped: the training loss sees raw values).
        `base` (B, N, p*p*3) in [-1, 1]: patches the head's output is added to (the patch-kmeans quantizer's code
        patches: the decoder then draws a correction that uses the neighbouring tokens)."""
        n = x.shape[1]
        h, w = grid if grid is not None else (math.isqrt(n), math.isqrt(n))
        if h * w != n:
            raise ValueError(f"{n} tokens do not form a {h}x{w} grid")
        x = self.embed(x)
        x = x + sincos_2d(h, w, x.shape[-1], device=x.device, dtype=x.dtype)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.head(self.norm(x))
        if base is not None:
            x = x + base.to(x.dtype)
        pixels = rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=h, w=w, p=self.patch_size, q=self.patch_size)
        return (pixels + 1) / 2  # the head predicts [-1, 1]; zero-mean outputs start at mid-grey
