"""SimVQ: a frozen random codebook C (K x e) and a learnable linear map W, so the codes are C W.

Only W (and the d <-> e projections) learn; because every code moves with W, all codes stay in play, which is why
VQRAE reaches 100% codebook usage at K = 16384, e = 1536 (Zhu et al., "Addressing Representation Collapse in
Vector Quantized Models with One Linear Layer").

The nearest-code search never builds the full (rows x K) distance matrix when that would exceed
`lookup_memory_mb`: it walks over row chunks, each one a single fused `addmm` (||c||^2 - 2 z.c) plus an argmin.
In inference mode the mapped codebook C W is cached and recomputed only when W changes, so `tokenize` pays only
for the search.

Initialisation (`SimVQ.reset_parameters`) follows the reference code (github.com/youngsheen/SimVQ,
taming/modules/vqvae/quantize.py): the frozen codebook C ~ N(0, 1/e) (std e^-1/2), and the map W an `nn.Linear`
left at PyTorch's default (kaiming-uniform with a=sqrt(5), i.e. U(-1/sqrt(e), 1/sqrt(e)), std 1/sqrt(3e)), so that
C W starts with rows of norm about 1/sqrt(3) and all codes spread in every direction. The d <-> e projections, which
the reference leaves to its conv encoder/decoder, keep PyTorch's default nn.Linear init as well. C is drawn from its
own generator seeded with `codebook_seed` (on the CPU, then copied), never from the global RNG: the same seed gives
the same codebook in every process and on every device, which is what a multi-process run needs (C is a buffer,
and DeepSpeed broadcasts parameters only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor  # straight-through quantized vectors (in the input space after SimVQ.forward)
    codes: torch.Tensor  # (B, N) long
    loss: torch.Tensor  # codebook + commitment_weight * commitment
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, memory_mb: float = 256.0) -> torch.Tensor:
    """Index of the L2-nearest row of `codebook` (K, e) for every row of `z` (M, e), in row chunks.

    argmin_k ||z - c_k||^2 = argmin_k (||c_k||^2 - 2 z.c_k): the ||z||^2 term does not change the winner.
    """
    z = z.float()
    codebook = codebook.float()
    num_codes = codebook.shape[0]
    code_sq = codebook.pow(2).sum(dim=1)
    rows = max(1, int(memory_mb * 2**20) // (4 * num_codes))
    if rows >= z.shape[0]:
        return torch.addmm(code_sq, z, codebook.t(), beta=1, alpha=-2).argmin(dim=1)
    out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
    buf = torch.empty(rows, num_codes, dtype=torch.float32, device=z.device)  # reused by every chunk
    for start in range(0, z.shape[0], rows):
        chunk = z[start:start + rows]
        dist = buf[: chunk.shape[0]]
        torch.addmm(code_sq, chunk, codebook.t(), beta=1, alpha=-2, out=dist)
        out[start:start + rows] = dist.argmin(dim=1)
    return out


class SimVQ(nn.Module):
    def __init__(
        self,
        *,
        dim: int,
        codebook_size: int = 16384,
        codebook_dim: int = 1536,
        commitment_weight: float = 0.25,
        l2_normalize: bool = False,
        lookup_memory_mb: float = 256.0,
        codebook_seed: int = 0,
    ):
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.commitment_weight = commitment_weight
        self.l2_normalize = l2_normalize
        self.lookup_memory_mb = lookup_memory_mb
        self.codebook_seed = codebook_seed
        self.proj_in = nn.Linear(dim, codebook_dim)
        self.proj_out = nn.Linear(codebook_dim, dim)
        # Frozen random codebook: a persistent buffer, so it is saved with the model but never optimised.
        self.register_buffer("codebook", torch.empty(codebook_size, codebook_dim))
        self.codebook_map = nn.Linear(codebook_dim, codebook_dim, bias=False)  # W
        self._cache: tuple[tuple, torch.Tensor] | None = None
        self.reset_parameters()

    def initial_codebook(self) -> torch.Tensor:
        """The frozen codebook C this quantizer starts with: N(0, 1/e) from `codebook_seed`, on the CPU."""
        g = torch.Generator(device="cpu").manual_seed(self.codebook_seed)
        return torch.randn(self.codebook_size, self.codebook_dim, generator=g, device="cpu") * self.codebook_dim**-0.5

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The SimVQ reference init (see the module docstring).

        Written with `torch.nn.init` looked up at call time, like PyTorch's own layers, so transformers' loading
        machinery applies: no-ops while `from_pretrained` builds an empty model, and tensors it loaded from a
        checkpoint (flagged `_is_hf_initialized`) left alone when it initialises missing ones. Parameters that ZeRO-3
        has already partitioned (empty placeholders, e.g. under `deepspeed.zero.Init`) are skipped."""
        for linear in (self.proj_in, self.proj_out, self.codebook_map):  # PyTorch's nn.Linear default, spelled out
            if linear.weight.numel() == 0:
                continue
            nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
            if linear.bias is not None:
                bound = 1 / math.sqrt(linear.in_features)
                nn.init.uniform_(linear.bias, -bound, bound)
        if self.codebook.device.type != "meta" and not getattr(self.codebook, "_is_hf_initialized", False):
            self.codebook.copy_(self.initial_codebook())
        self._cache = None

    def mapped_codebook(self) -> torch.Tensor:
        """C W, shape (K, e). Cached outside autograd until W or C changes (their version counters move). Not cached
        for a ZeRO-3 partitioned W: its local tensor is a placeholder whose pointer and version say nothing about
        the weights (DeepSpeed gathers them only inside the map's forward)."""
        w = self.codebook_map.weight
        if (torch.is_grad_enabled() and w.requires_grad) or hasattr(w, "ds_id"):
            return self._map()
        key = (w.data_ptr(), w._version, self.codebook.data_ptr(), self.codebook._version, w.dtype, w.device)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._map())
        return self._cache[1]

    def _map(self) -> torch.Tensor:
        codes = self.codebook_map(self.codebook)
        return F.normalize(codes, dim=-1) if self.l2_normalize else codes

    def _project(self, z: torch.Tensor) -> torch.Tensor:
        ze = self.proj_in(z)
        return F.normalize(ze, dim=-1) if self.l2_normalize else ze

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (...) long -> quantized features (..., d) in the input space."""
        return self.proj_out(F.embedding(codes, self.mapped_codebook()))

    def code_features(self) -> torch.Tensor:
        """Every code mapped into the input (encoder feature) space: (K, d)."""
        return self.proj_out(self.mapped_codebook())

    @torch.no_grad()
    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Features (B, N, d) -> codes (B, N)."""
        ze = self._project(z)
        return nearest_code(ze.reshape(-1, self.codebook_dim), self.mapped_codebook(),
                            self.lookup_memory_mb).view(ze.shape[:-1])

    def quantize(self, ze: torch.Tensor) -> QuantizerOutput:
        """The SimVQ core in codebook space: (..., e) -> nearest codes, straight-through vectors (..., e), losses."""
        codebook = self.mapped_codebook()
        codes = nearest_code(ze.detach().reshape(-1, self.codebook_dim), codebook.detach(),
                             self.lookup_memory_mb).view(ze.shape[:-1])
        q = F.embedding(codes, codebook).to(ze.dtype)
        codebook_loss = F.mse_loss(q, ze.detach())  # moves the codes (through W) towards the features
        commitment_loss = F.mse_loss(ze, q.detach())  # keeps the features close to their codes
        return QuantizerOutput(
            quantized=ze + (q - ze).detach(),  # straight-through estimator
            codes=codes,
            loss=codebook_loss + self.commitment_weight * commitment_loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
        )

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Features (B, N, d) -> quantized features (B, N, d), codes, losses."""
        out = self.quantize(self._project(z))
        out.quantized = self.proj_out(out.quantized)
        return out


class CodebookUsage:
    """Counts per code over any number of batches; utilization and perplexity of the code distribution."""

    def __init__(self, codebook_size: int):
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.long)

    def update(self, codes: torch.Tensor) -> CodebookUsage:
        codes = codes.detach().reshape(-1).cpu()
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{codes.min()}, {codes.max()}]")
        self.counts += torch.bincount(codes, minlength=self.codebook_size)
        return self

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def utilization(self) -> float:
        """Distinct codes used / K."""
        return float((self.counts > 0).sum()) / self.codebook_size

    @property
    def perplexity(self) -> float:
        """exp(entropy of the code frequencies): K for a uniform use of all codes, 1 for a single code."""
        if self.total == 0:
            return 0.0
        p = self.counts[self.counts > 0].double() / self.total
        return float(torch.exp(-(p * p.log()).sum()))

    def summary(self) -> dict:
        return {"codes_seen": self.total, "utilization": self.utilization, "perplexity": self.perplexity}
