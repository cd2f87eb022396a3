"""The unified model's training loss: next-token cross-entropy, text and image targets apart.

Why not the LLM's own loss: it computes logits for every position over the whole vocabulary (text + K codes), then
keeps a handful of targets. Here the head runs only at target positions, and each target is scored only against the
ids that can be right there, which is also what the sampler allows at inference:
- an image-code target against the K code rows (the sampler draws codes only inside `<boi>` ... `<eoi>`);
- a text target against the rows below `code_offset` (text, specials, `<boi>`; never a code).
A text-to-image record has h*w image targets against a few for an answer, so the two kinds are weighted apart
(`text_weight`, `image_weight`); the loss is the weighted mean over the batch's targets, and `weighted_count`
gives the denominator so the engine can weight micro-batches by their targets under gradient accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


@dataclass
class TokenLoss:
    loss: torch.Tensor  # weighted mean over targets (0 with grad when the batch has no target)
    text_loss: torch.Tensor  # mean over text targets (detached; 0 when none)
    image_loss: torch.Tensor  # mean over image-code targets (detached; 0 when none)
    text_tokens: int
    image_tokens: int


def target_counts(labels: torch.Tensor, code_range: tuple[int, int]) -> tuple[int, int]:
    """(text targets, image-code targets) of a batch's labels, counted as the loss counts them (shifted by one)."""
    targets = labels[:, 1:]
    lo, hi = code_range
    image = (targets >= lo) & (targets < hi)
    return int((targets != IGNORE_INDEX).sum()) - int(image.sum()), int(image.sum())


def weighted_count(labels: torch.Tensor, code_range: tuple[int, int], text_weight: float = 1.0,
                   image_weight: float = 1.0) -> float:
    """The loss's denominator: text targets * text_weight + image targets * image_weight."""
    n_text, n_image = target_counts(labels, code_range)
    return n_text * text_weight + n_image * image_weight


def _rows(head: nn.Module, hidden: torch.Tensor, start: int, end: int | None) -> torch.Tensor:
    """Logits of `hidden` for vocabulary rows [start, end) only. A plain Linear head is sliced before the matmul;
    any other head (a ZeRO-3 partitioned weight, which exists only inside its forward, or a peft wrapper whose
    trained rows live outside `.weight`) is called whole and its output sliced."""
    weight = getattr(head, "weight", None)
    if type(head) is nn.Linear and weight is not None and not hasattr(weight, "ds_id"):
        bias = None if head.bias is None else head.bias[start:end]
        return F.linear(hidden, weight[start:end], bias)
    return head(hidden)[..., start:end]


def token_loss(hidden: torch.Tensor, labels: torch.Tensor, head: nn.Module, code_range: tuple[int, int],
               text_weight: float = 1.0, image_weight: float = 1.0) -> TokenLoss:
    """Cross-entropy of next-token targets: `hidden` (B, L, H) the LLM's last hidden states, `labels` (B, L)."""
    lo, hi = code_range
    h = hidden[:, :-1]
    y = labels[:, 1:].to(h.device)
    keep = y != IGNORE_INDEX
    is_image = keep & (y >= lo) & (y < hi)
    is_text = keep & ~is_image
    zero = hidden.new_zeros(())
    sums, counts = [], []
    for mask, start, end, weight in ((is_text, 0, lo, text_weight), (is_image, lo, hi, image_weight)):
        n = int(mask.sum())
        if n == 0 or weight == 0:
            sums.append(zero)
            counts.append((n, 0.0))
            continue
        logits = _rows(head, h[mask], start, end).float()
        ce = F.cross_entropy(logits, y[mask] - start, reduction="sum")
        sums.append(ce)
        counts.append((n, weight))
    (n_text, w_text), (n_image, w_image) = counts
    denom = n_text * w_text + n_image * w_image
    if denom == 0:  # nothing to learn in this batch: a zero that still reaches every trainable parameter's graph
        loss = hidden.sum() * 0.0
    else:
        loss = (sums[0] * w_text + sums[1] * w_image) / denom
    return TokenLoss(
        loss=loss,
        text_loss=(sums[0].detach() / n_text) if n_text and w_text else zero.detach(),
        image_loss=(sums[1].detach() / n_image) if n_image and w_image else zero.detach(),
        text_tokens=n_text,
        image_tokens=n_image,
    )
