"""How a step is executed: plain PyTorch in one process, or DeepSpeed (ZeRO 0-3, offload, several processes).

Both backends offer the same small surface to the engine's single training loop: `model` to call, `backward`,
`step`, `lrs`, `save` / `load` of everything a resume needs, and `full_state_dict` for the export.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from .schedules import build_scheduler, resync_lrs

logger = logging.getLogger(__name__)

DS_CONFIG_DIR = Path(__file__).parent / "ds_configs"
_DS_TAG = "deepspeed"  # DeepSpeed's own sub-folder inside each of our checkpoint folders


def make_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.AdamW:
    # A torch optimizer (not DeepSpeed's FusedAdam / CPUAdam) needs no C++ build, on CPU or GPU.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay)


def _scheduler_factory(cfg: TrainConfig):
    return functools.partial(
        build_scheduler, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps, total_steps=cfg.max_steps,
        min_lr_ratio=cfg.min_lr_ratio,
    )


def _fp32_cpu(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.float() if v.is_floating_point() else v).detach().cpu() for k, v in state_dict.items()}


class PlainBackend:
    """One process, no DeepSpeed: AdamW, LambdaLR, clip_grad_norm_, bf16 autocast on GPU when asked."""

    def __init__(self, module: nn.Module, groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device,
                 bf16: bool):
        self.module = self.model = module.to(device)
        self.device = device
        self.cfg = cfg
        self.bf16 = bf16
        self.optimizer = make_optimizer(groups, cfg)
        self.scheduler = _scheduler_factory(cfg)(self.optimizer)
        self.trainable = [p for g in self.optimizer.param_groups for p in g["params"]]

    def autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.cfg.grad_accum).backward()

    def step(self, boundary: bool) -> float | None:
        """After each micro-batch's backward; updates the weights at the accumulation boundary only."""
        if not boundary:
            return None
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        if not torch.isfinite(norm):  # the engine stops the run; the weights in memory stay as they were
            self.optimizer.zero_grad(set_to_none=True)
            return float(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def save(self, folder: Path) -> None:
        state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        torch.save(state, folder / "state.pt")

    def load(self, folder: Path) -> None:
        path = folder / "state.pt"
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {folder} has no state.pt (was it written by a DeepSpeed run?)")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        resync_lrs(self.scheduler)

    def full_state_dict(self, checkpoint: Path | None) -> dict[str, torch.Tensor]:
        return _fp32_cpu(self.module.state_dict())


# ---------------------------------------------------------------------------------------------- DeepSpeed


def load_ds_config(name_or_path: str) -> tuple[dict[str, Any], str]:
    """A config from train/ds_configs by name (zero2) or from a JSON file path. Returns (config, where)."""
    path = DS_CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        path = Path(name_or_path)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in DS_CONFIG_DIR.glob("*.json")))
        raise FileNotFoundError(f"DeepSpeed config '{name_or_path}' is neither one of {names} nor a JSON file")
    try:
        return json.loads(path.read_text()), str(path)
    except json.JSONDecodeError as exc:
        raise ValueError(f"DeepSpeed config {path} is not valid JSON: {exc}") from None


def fill_ds_config(ds: dict[str, Any], where: str, cfg: TrainConfig, bf16: bool) -> dict[str, Any]:
    """Fill the "auto" values from the training config, which stays the one place for batch, accumulation,
    clipping and precision; an explicit value that disagrees with it is an error, not a silent override."""
    ds = copy.deepcopy(ds)
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ValueError(f"DeepSpeed config {where}: remove '{key}'; the engine supplies AdamW and the lr "
                             "schedule from the training config")
    if ds.get("fp16", {}).get("enabled") not in (None, False, "auto"):
        raise ValueError(f"DeepSpeed config {where}: fp16 is not supported; use precision=bf16")
    wanted = {"train_micro_batch_size_per_gpu": cfg.batch_size, "gradient_accumulation_steps": cfg.grad_accum,
              "gradient_clipping": cfg.grad_clip}
    for key, value in wanted.items():
        current = ds.get(key, "auto")
        if current != "auto" and current != value:
            raise ValueError(f"DeepSpeed config {where}: '{key}' is {current} but the training config gives "
                             f"{value}; set it to \"auto\"")
        ds[key] = value
    if ds.get("train_batch_size", "auto") == "auto":
        ds.pop("train_batch_size", None)
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    ds.pop("fp16", None)
    zero = ds.get("zero_optimization", {})
    if zero.get("offload_optimizer", {}).get("device", "none") != "none":
        # Our torch AdamW steps on the CPU copy; DeepSpeed otherwise insists on its compiled CPUAdam.
        ds.setdefault("zero_force_ds_cpu_optimizer", False)
    ds.setdefault("steps_per_print", 10**9)  # the engine logs; keep DeepSpeed's own step log quiet
    return ds


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Every buffer of `module` (a frozen random codebook, running statistics, ...) set to process `src`'s values.

    `deepspeed.initialize` broadcasts parameters, not buffers (and under ZeRO-3 only parameters are partitioned;
    buffers stay whole in every process), so a buffer that came out different in some process would silently stay
    different. The stages build their models after seeding and the codebook comes from its own seed; this is the
    guarantee that does not depend on either."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if torch.distributed.get_world_size() == 1:
        return
    for _, buf in sorted(module.named_buffers(remove_duplicate=True), key=lambda kv: kv[0]):
        if buf.numel() == 0:
            continue
        if buf.dtype == torch.bool:  # gloo cannot broadcast bool tensors
            tmp = buf.to(torch.uint8)
            torch.distributed.broadcast(tmp, src=src)
            buf.copy_(tmp.bool())
        else:
            torch.distributed.broadcast(buf.data, src=src)


class DeepSpeedBackend:
    """DeepSpeed engine around the stage's module, with our AdamW and schedule (DeepSpeed steps the schedule at
    each optimizer step and checkpoints it with the rest)."""

    def __init__(self, module: nn.Module, groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device,
                 bf16: bool):
        import deepspeed

        ds, where = load_ds_config(cfg.deepspeed)
        self.ds_config = fill_ds_config(ds, where, cfg, bf16)
        self.cfg = cfg
        self.device = device
        self.module = module
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=module, optimizer=make_optimizer(groups, cfg), lr_scheduler=_scheduler_factory(cfg),
            config=self.ds_config,
        )
        self.engine = self.model = engine
        self.optimizer, self.scheduler = optimizer, scheduler
        self.zero_stage = engine.zero_optimization_stage()
        broadcast_buffers(module)

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # scales by 1/grad_accum itself

    def step(self, boundary: bool) -> float | None:
        # DeepSpeed counts micro-batches itself and updates at its boundary; ours must agree or a resume drifted.
        if self.engine.is_gradient_accumulation_boundary() != boundary:
            raise RuntimeError("DeepSpeed's gradient-accumulation boundary disagrees with the engine's")
        self.engine.step()
        if not boundary:
            return None
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def save(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder), tag=_DS_TAG, save_latest=False)

    def load(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder), tag=_DS_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"checkpoint {folder} has no DeepSpeed state (was it written by a plain run?)")
        resync_lrs(self.scheduler)

    def full_state_dict(self, checkpoint: Path | None) -> dict[str, torch.Tensor] | None:
        """Full fp32 weights on the main process (None elsewhere); every process must call it. Below ZeRO-3 each
        process holds every weight, and the fp32 masters of the trainable ones (bf16 runs) come from the optimizer
        (a collective). ZeRO-3 weights are read back from the checkpoint just written, merged over all shards."""
        rank = torch.distributed.get_rank()
        if self.zero_stage < 3:
            from deepspeed.utils import safe_get_full_fp32_param

            state = self.module.state_dict()
            for name, p in self.module.named_parameters(remove_duplicate=False):  # tied weights: every name
                fp32 = safe_get_full_fp32_param(p) if p.requires_grad else None
                if fp32 is not None:
                    state[name] = fp32
            return _fp32_cpu(state) if rank == 0 else None
        if rank != 0:
            return None
        if checkpoint is None:
            raise RuntimeError("exporting ZeRO-3 weights needs a checkpoint")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return _fp32_cpu(get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=_DS_TAG))
