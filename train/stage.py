"""A training stage: what to train, on what, with which loss. The engine (train/engine.py) does everything else.

A stage is a small module: a config dataclass (subclass of `TrainConfig`) and a `Stage` subclass, registered by
name in `train/stages/__init__.py`. The engine calls, in order:

    stage = MyStage(config)                  # settings only: nothing random, no model (the engine has not seeded)
    module = stage.build_model()             # after seeding: nn.Module holding every parameter the loss touches
    groups = stage.param_groups(module)      # AdamW groups, each may carry its own "lr" / "weight_decay" / "name"
    data = stage.train_dataset()             # map-style Dataset; batches come from stage.collate
    loss, metrics = stage.loss(model, batch, step)   # every micro-batch (weighted by stage.target_count)
    stage.evaluate(model, step)              # every eval_every steps and at the end, in eval mode, no grad
    stage.export(module, state_dict, folder) # once, main process only, with the full fp32 weights

`model` (in `loss` / `evaluate`) is what to call: the DeepSpeed engine or, in plain mode, `module` itself; both
forward to `module.forward`. Under ZeRO-3 parameters exist only inside a forward call, so reach them through
`model(...)` (or submodules' forward), never by reading `.weight` directly. Frozen parts live in `module` with
`requires_grad=False`; every trainable parameter must be in exactly one group.

Build the model (and anything else drawn from the global RNG) in `build_model`, never in `__init__`: the engine
seeds right before calling it, which is what makes `seed` fix the initial weights and gives every process the same
ones (torch's initial seed differs per process). Under DeepSpeed the engine also copies every buffer from process 0
after `deepspeed.initialize`, which broadcasts parameters only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from .config import TrainConfig, config_to_dict

logger = logging.getLogger(__name__)


class Stage:
    """Base class of a training stage; override the methods that say what to train (see the module docstring)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[TrainConfig]] = TrainConfig
    # True: under ZeRO-3, build_model runs inside `zero3.partitioned_init`, so models it loads with transformers
    # (a pretrained LLM) are partitioned as they are created. Stages that copy or edit weights while building (the
    # tokenizer stages deep-copy the encoder as the stage-2 teacher) keep the default.
    partitioned_init: ClassVar[bool] = False
    # False: the engine takes the training dataset in its own order (one already random, e.g. a data mixture that
    # groups samples into batches by length) instead of a fresh permutation per epoch.
    shuffle_data: ClassVar[bool] = True

    def __init__(self, config: TrainConfig):
        if not isinstance(config, self.config_class):
            raise TypeError(f"stage {self.name or type(self).__name__} needs a {self.config_class.__name__}")
        self.config = config
        # Set by the engine before build_model: where the model runs, and the dtype its floating inputs need
        # (bfloat16 under DeepSpeed bf16, whose weights are bf16; None: leave them as they are).
        self.device = torch.device("cpu")
        self.float_dtype: torch.dtype | None = None

    def to_device(self, batch: Any) -> Any:
        """Move a batch the stage built itself (in `evaluate`) the way the engine moves training batches."""
        return move_batch(batch, self.device, self.float_dtype)

    # -- what to train
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, module: nn.Module) -> list[dict[str, Any]]:
        """One group at the config's lr and weight decay (decay on >= 2-D weights only). Override for groups
        with their own lr, e.g. `param_groups(module.encoder, lr=1e-5, name="encoder") + param_groups(...)`."""
        return param_groups(module, lr=self.config.lr, weight_decay=self.config.weight_decay)

    # -- on what
    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def collate(self, samples: list[Any]) -> Any:
        return default_collate(samples)

    # -- with which loss
    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """Scalar loss for one micro-batch (already on the device) and metrics to log, averaged like the loss
        over micro-batches and processes: return the same keys on every call (0.0 where one does not apply)."""
        raise NotImplementedError

    # -- optional hooks
    def target_count(self, batch: Any) -> float | None:
        """How many (weighted) targets the micro-batch's mean loss averages over, or None (the default) to weigh
        every micro-batch the same. With counts, the engine makes a step's loss the mean over all the targets of
        its micro-batches and processes, whatever their lengths (gradient accumulation stays exact)."""
        return None

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Called on every process (ZeRO-3 forwards need them all); the main process's dict is logged."""
        return {}

    def export(self, module: nn.Module, state_dict: dict[str, torch.Tensor], folder: Path) -> None:
        """Write the final weights as a plain folder. Default: `save_pretrained(folder, state_dict=...)` when the
        module has it (Hugging Face models), else model.safetensors + config.json (the stage config).
        `module`'s own parameters may be ZeRO-3 placeholders: take the weights from `state_dict`."""
        if hasattr(module, "save_pretrained"):
            module.save_pretrained(folder, state_dict=state_dict)
            return
        save_state_dict(state_dict, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(config_to_dict(self.config), indent=2))


def param_groups(
    module: nn.Module, lr: float, weight_decay: float = 0.0, name: str | None = None
) -> list[dict[str, Any]]:
    """AdamW groups for the trainable parameters of `module`: >= 2-D weights decay, biases and norm scales do not
    (nanoGPT's rule). Empty groups are left out; names get a `/decay` or `/no_decay` suffix."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    prefix = name or "params"
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": f"{prefix}/decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{prefix}/no_decay"},
    ]
    return [g for g in groups if g["params"]]


def check_param_groups(module: nn.Module, groups: list[dict[str, Any]]) -> None:
    """Every trainable parameter in exactly one group, and nothing frozen or foreign in any: a mistake here
    trains the wrong thing silently, so it is an error."""
    names = {id(p): n for n, p in module.named_parameters()}
    seen: dict[int, str] = {}
    for i, g in enumerate(groups):
        label = g.get("name", f"#{i}")
        for p in g["params"]:
            if id(p) not in names:
                raise ValueError(f"parameter group '{label}' holds a parameter that is not in the model")
            if id(p) in seen:
                raise ValueError(f"parameter '{names[id(p)]}' is in two groups ('{seen[id(p)]}' and '{label}')")
            if not p.requires_grad:
                raise ValueError(f"parameter group '{label}' holds the frozen parameter '{names[id(p)]}'")
            seen[id(p)] = label
    missing = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"trainable parameter '{missing[0]}' is in no parameter group ({len(missing)} such)")
    if not seen:
        raise ValueError("the stage's parameter groups hold no trainable parameter")


def unwrap(model: nn.Module) -> nn.Module:
    """The stage's own module behind what `loss`/`evaluate` receive (the DeepSpeed engine wraps it as `.module`)."""
    return getattr(model, "module", model)


def sub_state_dict(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix.` with the prefix removed: the weights of one sub-model to export."""
    p = prefix.rstrip(".") + "."
    return {k[len(p) :]: v for k, v in state_dict.items() if k.startswith(p)}


def save_state_dict(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # safetensors refuses tensors that share storage (tied weights): store each as its own copy.
    save_file({k: v.detach().contiguous().clone() for k, v in state_dict.items()}, str(path))


def move_batch(batch: Any, device: torch.device, float_dtype: torch.dtype | None = None) -> Any:
    """Tensors of a (nested) batch to `device`; floating tensors also to `float_dtype` (DeepSpeed bf16, whose
    module weights are bf16). Objects with `.to` (a Hugging Face BatchEncoding) are moved as a whole."""
    if isinstance(batch, torch.Tensor):
        if float_dtype is not None and batch.is_floating_point():
            return batch.to(device=device, dtype=float_dtype, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return type(batch)({k: move_batch(v, device, float_dtype) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(move_batch(v, device, float_dtype) for v in batch)
    if isinstance(batch, tuple):  # namedtuple
        return type(batch)(*(move_batch(v, device, float_dtype) for v in batch))
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(
            batch, **{f.name: move_batch(getattr(batch, f.name), device, float_dtype) for f in dataclasses.fields(batch)}
        )
    if hasattr(batch, "to") and callable(batch.to):
        return batch.to(device)
    return batch
