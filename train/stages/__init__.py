"""Stage registry: `vqrae train NAME` looks NAME up here.

A stage is a module in this package defining a `Stage` subclass (train/stage.py) and its config dataclass; add
one line to STAGE_MODULES ("name": "module path") and the module is imported only when that stage runs, so the
LLM stages' imports never slow the tokenizer's. Tests and plug-ins may also `register_stage(cls)` at run time.
"""

from __future__ import annotations

import importlib

from ..stage import Stage

# name -> module defining a Stage subclass with that `name` (imported on first use).
STAGE_MODULES: dict[str, str] = {
    "encoder-pretrain": "vqrae.train.stages.encoder_pretrain",
    "tokenizer-stage1": "vqrae.train.stages.tokenizer",
    "tokenizer-stage2": "vqrae.train.stages.tokenizer",
    "lm-pretrain": "vqrae.train.stages.lm_pretrain",
    "unified-align": "vqrae.train.stages.unified",
    "unified-sft": "vqrae.train.stages.unified",
    "unified-gen": "vqrae.train.stages.unified",
}

_registered: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Make `cls` available under `cls.name` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`")
    _registered[cls.name] = cls
    return cls


def stage_names() -> list[str]:
    return sorted({*STAGE_MODULES, *_registered})


def get_stage(name: str) -> type[Stage]:
    """The Stage class registered as `name`; a one-line ValueError listing the known names otherwise."""
    if name not in _registered and name in STAGE_MODULES:
        module = importlib.import_module(STAGE_MODULES[name])
        found = [v for v in vars(module).values()
                 if isinstance(v, type) and issubclass(v, Stage) and v is not Stage and v.name == name]
        if not found:
            raise ValueError(f"stage module {STAGE_MODULES[name]} defines no Stage subclass named '{name}'")
        _registered[name] = found[0]
    if name not in _registered:
        known = ", ".join(stage_names()) or "none registered yet"
        raise ValueError(f"unknown training stage '{name}' (known: {known})")
    return _registered[name]
