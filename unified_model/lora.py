"""LoRA fine-tuning of a unified model's LLM (peft), with the image vocabulary's rows trained in full.

    model = UnifiedModel.from_pretrained(folder)
    model.set_trainable(projector=True, llm=False)      # the projector's trainability is the caller's choice
    add_lora(model, LoraSettings(r=16))                 # model.llm becomes a peft model, in place
    ... train ...
    save_lora(model, "ckpt")                            # ckpt/base/ (a plain UnifiedModel folder) + ckpt/adapter/
    merged = merge_lora(load_lora("ckpt"))              # plain weights again: save_pretrained / from_pretrained

What trains: the LoRA matrices of `target_modules`, and the rows the unified model added to the LLM's vocabulary
(`new_token_ids`: the image specials and the K code rows) in the input embeddings and, when it is a separate
tensor, the output head. Those rows are new, so a frozen copy of them would leave the LLM unable to read or write
image codes; the text rows stay exactly as pretrained. The rows use peft's `trainable_token_indices` (a
`TrainableTokensWrapper` per table holding a (rows, hidden) tensor that replaces those rows in the forward pass),
so an optimizer only sees rows x hidden values per table, not the whole vocabulary. Nothing else in the LLM trains.

A LoRA checkpoint folder (`save_lora`, `load_lora`, `vqrae export merge-lora`):
    folder/base/      a plain UnifiedModel folder (`save_pretrained`): the LLM's base weights (no adapter merged),
                      the projector and VQRAE as they are now, the processor and sampling defaults
    folder/adapter/   peft's adapter folder (adapter_config.json + adapter_model.safetensors): the LoRA matrices and
                      the trained token rows of both tables (`trainable_tokens_delta`)
The base lives in a sub-folder on purpose: `UnifiedModel.from_pretrained(folder)` on a LoRA checkpoint then fails
("no config.json") instead of silently loading the model without its adapters.

peft is imported lazily: it is a training extra (`pip install 'vqrae[train]'`), not needed to run a merged model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .modeling import UnifiedModel

logger = logging.getLogger(__name__)

# Every projection of a Llama/Qwen-style decoder layer (attention and MLP), the usual QLoRA choice.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_DIR = "base"
ADAPTER_DIR = "adapter"
_ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class LoraSettings:
    """LoRA on the LLM. `r` = 0 turns it off (`add_lora` leaves the model as it is: full fine-tuning or frozen,
    as `set_trainable` chose). `alpha` / `r` scales the adapters' update; `dropout` applies to their input."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 0:
            raise ValueError(f"lora.r: must be an integer >= 0 (0 = off), got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not self.alpha > 0:
            raise ValueError(f"lora.alpha: must be > 0, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout: must be in [0, 1), got {self.dropout!r}")
        targets = self.target_modules
        names = isinstance(targets, list | tuple) and all(isinstance(t, str) and t.strip() for t in targets)
        if not (names and targets):
            raise ValueError(f"lora.target_modules: must be a non-empty list of module names, got {targets!r}")
        self.target_modules = list(targets)

    @property
    def enabled(self) -> bool:
        return self.r > 0


def _peft():
    try:
        import peft
    except ImportError as exc:
        raise ImportError("LoRA needs peft: pip install 'vqrae[train]'") from exc
    return peft


def is_lora(model: UnifiedModel) -> bool:
    """True when `model.llm` is a peft model (LoRA adapters not merged)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model.llm, PeftModel)


def new_token_ids(model: UnifiedModel) -> list[int]:
    """Sorted ids of the LLM rows the unified model added: its specials and the whole code range.

    The config stores the ids of `<image>`, `<boi>`, `<eoi>`, `<uncond>` and pad, not which of them the text
    tokenizer lacked. `extend_vocabulary` appends every token it adds in one batch at the end of the tokenizer
    (`<image> <boi> <eoi> <uncond>`, the template's specials the tokenizer lacked, then `<pad>` if it had none), so
    the added ids are the tail of the tokenizer from the first of those four that sits in the consecutive run
    ending at `<uncond>`. That tail holds the added template specials and an added `<pad>`, and excludes a pad
    (or `<image>`) the tokenizer already had. Only added tokens are taken from it, never ordinary vocabulary.
    Without a processor (no tokenizer to read) it is the four ids, the pad id, and the codes.
    """
    c = model.config
    core = [c.image_token_id, c.boi_token_id, c.eoi_token_id, c.uncond_token_id]
    ids = {i for i in core if i >= 0}
    if model.processor is not None:
        tokenizer = model.text_tokenizer
        start = c.uncond_token_id
        for tid in reversed(core[:-1]):
            if tid != start - 1:
                break
            start = tid
        added = set(tokenizer.added_tokens_decoder)
        ids.update(i for i in range(start, len(tokenizer)) if i in added)
    elif c.pad_token_id >= 0:
        ids.add(c.pad_token_id)
    ids.update(range(*c.code_range))
    return sorted(ids)


def _module_name(root: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in root.named_modules() if m is module)


def _check_targets(llm: nn.Module, targets: list[str]) -> None:
    """Every target must name some module of the LLM (peft only asks that one of them does): a typo fails here."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in llm.named_modules()}
    for target in targets:
        if target not in leaf_names:
            raise ValueError(f"lora.target_modules: the LLM ({type(llm).__name__}) has no module named {target!r}")


def lora_config(model: UnifiedModel, settings: LoraSettings):
    """The peft `LoraConfig` for `add_lora`: adapters on `settings.target_modules`, `new_token_ids` trainable in
    the input embeddings and (untied) the output head."""
    peft = _peft()
    llm = model.llm
    emb, head = llm.get_input_embeddings(), llm.get_output_embeddings()
    rows = new_token_ids(model)
    if head is None or head.weight is emb.weight:
        # One tensor: peft wraps the input table and ties the head's wrapper to it (tie_word_embeddings).
        indices: list[int] | dict[str, list[int]] = rows
    else:
        indices = {_module_name(llm, emb): rows, _module_name(llm, head): rows}
    return peft.LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules), trainable_token_indices=indices, task_type="CAUSAL_LM",
    )


def add_lora(model: UnifiedModel, settings: LoraSettings) -> UnifiedModel:
    """Wrap `model.llm` with LoRA adapters, in place (`model.llm` becomes a `PeftModelForCausalLM`); returns `model`.

    Afterwards the LLM's only trainable tensors are the adapters and the new vocabulary rows (see the module
    docstring); the projector and VQRAE keep the `requires_grad` they had, so call `set_trainable` before, not
    after (`set_trainable(llm=True)` would unfreeze the whole base LLM again). Initialise the code embeddings
    (`init_code_embeddings`) before too: afterwards the trained rows live in the adapter, not in the tables.
    `settings.r == 0` returns the model untouched.
    """
    if not isinstance(settings, LoraSettings):
        raise TypeError(f"add_lora needs LoraSettings, got {type(settings).__name__}")
    if not settings.enabled:
        return model
    if is_lora(model):
        raise ValueError("the model's LLM already carries LoRA adapters (merge_lora them first)")
    _check_targets(model.llm, settings.target_modules)
    peft = _peft()
    model.llm = peft.get_peft_model(model.llm, lora_config(model, settings))
    n_train = sum(p.numel() for p in model.llm.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.llm.parameters())
    logger.info("LoRA r=%d on %s: %d of %d LLM values trainable (%d new vocabulary rows)", settings.r,
                ",".join(settings.target_modules), n_train, n_all, len(new_token_ids(model)))
    return model


def merge_lora(model: UnifiedModel) -> UnifiedModel:
    """Fold the adapters and the trained token rows into the LLM's weights and unwrap it, in place; returns
    `model`, a plain UnifiedModel (`save_pretrained` / `from_pretrained` as usual). The LLM's weights stay frozen
    (`requires_grad` False) as LoRA left them."""
    if not is_lora(model):
        raise ValueError("merge_lora: the model's LLM has no LoRA adapters")
    model.llm = model.llm.merge_and_unload()
    model.config.text_config = model.llm.config  # the same object unless peft replaced it; keep them one
    model._text_mask = None
    return model


# ----- checkpoints -----
def _base_key_map(peft_llm: nn.Module) -> dict[str, str | None]:
    """Each `peft_llm.state_dict()` key -> the plain LLM's key, or None for an adapter tensor.

    Worked out from the module tree, not from the tensors, so it also holds for a ZeRO-3 model whose parameters are
    placeholders: inside a peft layer only `base_layer` is the original module (its name segment dropped); inside
    an auxiliary wrapper (trainable tokens) the `token_adapter` / `original_module` segments are dropped and
    anything else (`modules_to_save`) is adapter state.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    keys: dict[str, str | None] = {}

    def walk(module: nn.Module, peft_prefix: str, plain_prefix: str | None) -> None:
        own = isinstance(module, BaseTunerLayer)
        tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for name, _ in tensors:
            keys[peft_prefix + name] = None if plain_prefix is None or own else plain_prefix + name
        for name, child in module.named_children():
            if plain_prefix is None:
                plain = None
            elif own:
                plain = plain_prefix if name == "base_layer" else None
            elif isinstance(module, AuxiliaryTrainingWrapper):
                plain = plain_prefix if name in ("token_adapter", "original_module") else None
            else:
                plain = f"{plain_prefix}{name}."
            walk(child, f"{peft_prefix}{name}.", plain)

    walk(peft_llm.base_model.model, "base_model.model.", "")
    return keys


def split_lora_state_dict(model: UnifiedModel, state_dict: Mapping[str, torch.Tensor] | None = None
                          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(plain UnifiedModel state dict with the LLM's base weights, the peft model's own state dict) from the
    wrapped model's state dict (`model.state_dict()` by default; a training engine's gathered one under ZeRO-3)."""
    full = dict(model.state_dict() if state_dict is None else state_dict)
    llm_sd = {k[len("llm."):]: v for k, v in full.items() if k.startswith("llm.")}
    key_map = _base_key_map(model.llm)
    base = {k: v for k, v in full.items() if not k.startswith("llm.")}
    for key, value in llm_sd.items():
        if key not in key_map:
            raise ValueError(f"state dict key 'llm.{key}' is not a tensor of this LoRA model")
        if key_map[key] is not None:
            base["llm." + key_map[key]] = value
    return base, llm_sd


def save_lora(model: UnifiedModel, folder: str | os.PathLike,
              state_dict: Mapping[str, torch.Tensor] | None = None, is_main_process: bool = True) -> Path:
    """Write a LoRA checkpoint (layout in the module docstring); returns the folder. `state_dict`: the wrapped
    model's full state dict when the module's own tensors are not the weights (ZeRO-3 placeholders)."""
    if not is_lora(model):
        raise ValueError("save_lora: the model's LLM has no LoRA adapters (use save_pretrained)")
    folder = Path(folder)
    base, llm_sd = split_lora_state_dict(model, state_dict)
    model.save_pretrained(folder / BASE_DIR, state_dict=base, is_main_process=is_main_process)
    # save_embedding_layers=False: the base tables are in base/; the trained rows are adapter tensors already.
    model.llm.save_pretrained(folder / ADAPTER_DIR, state_dict=llm_sd, save_embedding_layers=False,
                              is_main_process=is_main_process)
    return folder


def check_lora_folder(folder: str | os.PathLike) -> Path:
    """A LoRA checkpoint folder as a Path, or a one-line FileNotFoundError / ValueError saying what is wrong."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"LoRA checkpoint folder not found: {folder}")
    if not (path / ADAPTER_DIR / _ADAPTER_CONFIG).is_file():
        hint = " (a plain model folder: nothing to merge)" if (path / "config.json").is_file() else ""
        raise ValueError(f"{folder} is not a LoRA checkpoint: no {ADAPTER_DIR}/{_ADAPTER_CONFIG}{hint}")
    if not (path / BASE_DIR / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is a LoRA checkpoint without its base model ({BASE_DIR}/config.json)")
    return path


def load_lora(folder: str | os.PathLike, trainable: bool = False, **kwargs) -> UnifiedModel:
    """A LoRA checkpoint as a wrapped UnifiedModel (adapters active, not merged). `trainable`: adapters and token
    rows require grad (to resume training); `kwargs` go to `UnifiedModel.from_pretrained` (dtype, device, ...)."""
    path = check_lora_folder(folder)
    from .modeling import UnifiedModel

    peft = _peft()
    model = UnifiedModel.from_pretrained(path / BASE_DIR, **kwargs)
    model.llm = peft.PeftModel.from_pretrained(model.llm, str(path / ADAPTER_DIR), is_trainable=trainable)
    return model

