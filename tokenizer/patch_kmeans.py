"""PatchKMeansVQ: codes placed by what each token looks like (`quantizer: patch-kmeans`; SimVQ is the default).

A small per-token head predicts each token's pixel patch from its encoder feature, trained on the true patch (the
`pixel_loss`). The K codes are centroids in that predicted-patch space, kept by EMA K-means (the VQ-VAE-2 update:
EMA counts and sums, Laplace-smoothed), seeded by k-means++ on the first training batch, with dead codes restarted
on the tokens they serve worst (drawn in proportion to their squared error, as k-means++ does). Each code also
keeps the EMA mean of the encoder features assigned to it: that (K, d) table is what the decoder reads (through a
straight-through estimator, like SimVQ's output) and what `code_features()` gives the unified model; the decoder
adds its output to the code's patch (`VQRAE.code_patches`), so it starts from a table of the codes and learns the
correction that the neighbouring tokens allow. A code's patch is the EMA mean of the *true* patches of its tokens
(what a table of the codes would draw; the centroid, a mean of predictions, is blurrier).

Why (issue 11, measured on ShapesWorld at patch 4, see README "Tokenizer fidelity"): the encoder's features keep
each token's shape (a per-token MLP draws it back, 96.9% shape accuracy), but every nearest-code quantizer of the
semantic features themselves (SimVQ and five variants, K-means re-seeding, a learned Gumbel assignment) merged
shapes of one colour and kept 64-78%; K-means on an MLP's pixel prediction kept 90-92%. So the encoder, the decoder,
the two stages and self-distillation stay VQRAE's; only where the code boundaries lie changes: nearest code in a
space trained to hold the token's pixels instead of in the semantic space.

Multi-process training: the EMA statistics are summed over processes before each update and every k-means++ seed or
restart is drawn on rank 0 and broadcast, so all processes keep the same codebook (these are buffers, which
DeepSpeed never broadcasts). The statistics are kept in fp32 whatever the model's dtype.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .quantizer import QuantizerOutput, nearest_code


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding: indices of k rows of x (M, e), each drawn in proportion to its squared distance to the
    rows already chosen. Rows may repeat when x has fewer than k distinct rows."""
    first = torch.randint(x.shape[0], (1,), generator=generator, device=x.device)
    chosen = [first]
    dist_sq = (x - x[first]).pow(2).sum(1)
    for _ in range(k - 1):
        weights = dist_sq if dist_sq.sum() > 0 else torch.ones_like(dist_sq)
        nxt = torch.multinomial(weights, 1, generator=generator)
        chosen.append(nxt)
        dist_sq = torch.minimum(dist_sq, (x - x[nxt]).pow(2).sum(1))
    return torch.cat(chosen)


class PatchKMeansVQ(nn.Module):
    def __init__(
        self,
        *,
        dim: int,
        patch_size: int,
        codebook_size: int = 16384,
        head_dim: int = 512,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.25,
        lookup_memory_mb: float = 256.0,
    ):
        super().__init__()
        if not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {ema_decay}")
        self.dim = dim
        self.patch_dim = 3 * patch_size * patch_size
        self.codebook_size = codebook_size
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold  # EMA tokens per step below which a code is restarted
        self.lookup_memory_mb = lookup_memory_mb
        self.head = nn.Sequential(nn.Linear(dim, head_dim), nn.GELU(), nn.Linear(head_dim, head_dim), nn.GELU(),
                                  nn.Linear(head_dim, self.patch_dim))
        k = codebook_size
        self.register_buffer("centroids", torch.zeros(k, self.patch_dim))  # lookup space: predicted patches
        self.register_buffer("code_embed", torch.zeros(k, dim))  # what the decoder reads: mean feature per code
        self.register_buffer("code_patch", torch.zeros(k, self.patch_dim))  # what it corrects: mean true patch
        self.register_buffer("cluster_size", torch.zeros(k))  # EMA tokens per step
        self.register_buffer("centroid_sum", torch.zeros(k, self.patch_dim))
        self.register_buffer("embed_sum", torch.zeros(k, dim))
        self.register_buffer("patch_sum", torch.zeros(k, self.patch_dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The head keeps PyTorch's nn.Linear init; the codebook is empty until the first training batch seeds it.
        Like SimVQ.reset_parameters: tensors loaded from a checkpoint (flagged by transformers) are left alone."""
        for m in self.head:
            if isinstance(m, nn.Linear) and m.weight.numel():
                m.reset_parameters()
        for buf in (self.centroids, self.code_embed, self.code_patch, self.cluster_size, self.centroid_sum,
                    self.embed_sum, self.patch_sum, self.initialized):
            if buf.device.type != "meta" and not getattr(buf, "_is_hf_initialized", False):
                buf.zero_()

    # -- the API SimVQ has too ------------------------------------------------------------------------------------

    def predict_patches(self, z: torch.Tensor) -> torch.Tensor:
        """Features (..., d) -> predicted pixel patches (..., 3 p^2) in [-1, 1] space, (p q c) order."""
        return self.head(z)

    def _assign(self, pred: torch.Tensor) -> torch.Tensor:
        flat = pred.detach().float().reshape(-1, self.patch_dim)
        return nearest_code(flat, self.centroids.float(), self.lookup_memory_mb).view(pred.shape[:-1])

    @torch.no_grad()
    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Features (B, N, d) -> codes (B, N)."""
        return self._assign(self.predict_patches(z))

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (...) long -> the codes' mean features (..., d)."""
        return F.embedding(codes, self.code_embed)

    def code_patches(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (...) long -> the codes' patches (..., 3 p^2) in [-1, 1]: what the decoder corrects."""
        return F.embedding(codes, self.code_patch)

    def code_features(self) -> torch.Tensor:
        """Every code as a vector in the encoder feature space: (K, d)."""
        return self.code_embed

    def forward(self, z: torch.Tensor, target_patches: torch.Tensor | None = None) -> QuantizerOutput:
        """Features (B, N, d) [+ the true patches (B, N, 3 p^2) in [-1, 1], for the head's loss] -> quantized
        features (B, N, d), codes, losses. In training mode (with gradients) the codebook is updated."""
        pred = self.predict_patches(z)
        update = self.training and torch.is_grad_enabled()
        # the true patches feed the codes' patch table; without them (a forward that has no pixels) the head's
        # predictions stand in
        patches = (target_patches if target_patches is not None else pred).detach()
        if update and not bool(self.initialized):
            self._seed(pred, z, patches)
        codes = self._assign(pred)
        if update:
            self._ema_update(pred, z, patches, codes)
        q = self.code_vectors(codes).to(z.dtype)
        # Reported, not trained: the codes are placed in the head's space, so pulling features towards their code's
        # mean feature buys nothing, and in stage 2 it was the largest force on the encoder (5x the pixel head's
        # gradient): it dragged the features to cosine 0.47 from the stage-1 encoder, self-distillation notwithstanding.
        commitment = F.mse_loss(z.detach(), q)
        pixel = F.mse_loss(pred, target_patches.to(pred.dtype)) if target_patches is not None else pred.new_zeros(())
        return QuantizerOutput(
            quantized=z + (q - z).detach(),
            codes=codes,
            loss=pixel,
            codebook_loss=pixel,  # the head's pixel loss: what places the codes (the EMA needs no loss)
            commitment_loss=commitment,
        )

    # -- EMA K-means ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _broadcast(self, *tensors: torch.Tensor) -> None:
        if _world() > 1:
            for t in tensors:
                dist.broadcast(t, src=0)

    @torch.no_grad()
    def _seed(self, pred: torch.Tensor, z: torch.Tensor, patches: torch.Tensor) -> None:
        """k-means++ on the first training batch (rank 0's, broadcast)."""
        x, f, t = self._rows(pred, z, patches)
        idx = _kmeans_pp(x, self.codebook_size)
        centroids, embed, patch = x[idx], f[idx], t[idx]
        self._broadcast(centroids, embed, patch)
        self.centroids.copy_(centroids)
        self.code_embed.copy_(embed)
        self.code_patch.copy_(patch)
        size = self.dead_code_threshold * 2  # a fresh code gets some steps to win tokens before it counts dead
        self.cluster_size.fill_(size)
        self.centroid_sum.copy_(centroids * size)
        self.embed_sum.copy_(embed * size)
        self.patch_sum.copy_(patch * size)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _rows(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        return [t.detach().float().reshape(-1, t.shape[-1]) for t in tensors]

    @torch.no_grad()
    def _ema_update(self, pred: torch.Tensor, z: torch.Tensor, patches: torch.Tensor, codes: torch.Tensor) -> None:
        x, f, t = self._rows(pred, z, patches)
        flat = codes.reshape(-1)
        k = self.codebook_size
        counts = torch.bincount(flat, minlength=k).float()
        sums = [torch.zeros(k, rows.shape[1], device=rows.device).index_add_(0, flat, rows) for rows in (x, f, t)]
        if _world() > 1:
            for s in (counts, *sums):
                dist.all_reduce(s)
        d = self.ema_decay
        size = self.cluster_size.float() * d + counts * (1 - d)
        total = size.sum()
        smoothed = (size + 1e-5) / (total + k * 1e-5) * total  # Laplace: an empty code never divides by zero
        self.cluster_size.copy_(size)
        for acc, mean, batch_sum in ((self.centroid_sum, self.centroids, sums[0]),
                                     (self.embed_sum, self.code_embed, sums[1]),
                                     (self.patch_sum, self.code_patch, sums[2])):
            acc.copy_(acc.float() * d + batch_sum * (1 - d))
            mean.copy_(acc.float() / smoothed[:, None])
        dead = size < self.dead_code_threshold  # identical on every process: the statistics were summed
        if bool(dead.any()):
            self._restart(dead, x, f, t)

    @torch.no_grad()
    def _restart(self, dead: torch.Tensor, x: torch.Tensor, f: torch.Tensor, t: torch.Tensor) -> None:
        """Dead codes move onto this batch's tokens, drawn in proportion to their squared distance to their
        nearest live code (rank 0 draws, every process takes the same)."""
        n = int(dead.sum())
        live = self.centroids.float()[~dead]
        if live.shape[0]:
            err = (x - live[nearest_code(x, live, self.lookup_memory_mb)]).pow(2).sum(1)
        else:
            err = torch.ones(x.shape[0], device=x.device)
        weights = err if err.sum() > 0 else torch.ones_like(err)
        idx = torch.multinomial(weights, n, replacement=n > int((weights > 0).sum()))  # too few distinct tokens
        new = [x[idx], f[idx], t[idx]]
        self._broadcast(*new)
        size = self.dead_code_threshold * 2  # as in _seed
        self.cluster_size[dead] = size
        for mean, acc, rows in zip((self.centroids, self.code_embed, self.code_patch),
                                   (self.centroid_sum, self.embed_sum, self.patch_sum), new):
            mean[dead] = rows.to(mean.dtype)
            acc[dead] = (rows * size).to(acc.dtype)


__all__ = ["PatchKMeansVQ"]
