"""Learning-rate schedules: linear warmup, then cosine decay or constant. One multiplier for every parameter group,
so groups with their own lr (a low encoder lr, a high projector lr) keep their ratio throughout."""

from __future__ import annotations

import functools
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("cosine", "constant")


def lr_factor(step: int, schedule: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based: the lr used by the step-th update).

    Warmup ramps linearly to 1 over `warmup_steps` updates, reaching 1 at the last warmup step (so the first
    update already learns, at lr / warmup_steps). Cosine then decays to `min_lr_ratio` at `total_steps`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """A LambdaLR (its state, the step count, saves and loads with the checkpoint) over `lr_factor`."""
    lr_factor(0, schedule, warmup_steps, total_steps, min_lr_ratio)  # validates the name now, not at step 0
    fn = functools.partial(
        lr_factor, schedule=schedule, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio
    )
    return LambdaLR(optimizer, fn)


def resync_lrs(scheduler: LambdaLR) -> None:
    """Set each group's lr from the schedule at the scheduler's step. After loading a checkpoint this is a no-op
    for an unchanged config, and makes a resume with a new max_steps (a longer cosine) use the new schedule at
    once instead of the lr stored in the optimizer state."""
    step = scheduler.last_epoch
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(step)
