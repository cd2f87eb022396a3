"""`vqrae bench model-size`: the model a training config trains, built on the meta device, counted and costed.

    size = model_size("paper/unified-gen")        # a config name or file; stage= and overrides= optional
    print(format_report(size, gpus=8))

`build_on_meta` builds exactly the module the config's stage hands the training engine (the tokenizer stages'
`TokenizerTrainer`: VQRAE + stage-2 teacher + perceptual network + discriminator; the unified stages' `UnifiedModel`
with its vocabulary extended by the codes), with every tensor on the `meta` device: shapes, no storage. A 7B model
builds in seconds on a laptop, and nothing is downloaded. The trainable parameters are the ones the stage's own
`param_groups` hands the optimizer.

Where each part's architecture comes from:
- hub ids of the models the paper's recipes use: built-in copies of their config.json (`HUB_LLMS`, `HUB_ENCODERS`);
  any other hub id is an error naming the tables (give a local folder instead);
- a local folder (LLM, encoder, VQRAE, unified model): its own config.json (and an LLM's tokenizer);
- a folder that does not exist yet but that another config writes (its `output_dir` + `/final`, looked up beside
  the config and among the shipped ones; e.g. stage 2's `tokenizer: runs/paper/tokenizer-stage1/final`): built from
  that config, so a whole pipeline can be sized before anything has been trained.

Memory per GPU under DeepSpeed, bf16 weights and fp32 AdamW (the engine's mixed precision), with P parameters in
the module (frozen ones too), T of them trainable, N processes (the ZeRO paper's accounting, K = 12):
    ZeRO-0  2P + 2T + 12T        ZeRO-1  2P + 2T + 12T/N        ZeRO-2  2P + (2T + 12T)/N
    ZeRO-3  (2P + 2T + 12T)/N    ZeRO-3 + offload (zero3_offload): the same bytes per process in CPU memory
12 bytes per trainable parameter: its fp32 master copy and Adam's two fp32 moments. Buffers (SimVQ's frozen
codebook) are whole on every GPU, in bf16. Activations, the logits, temporary buffers, communication buckets and
allocator fragmentation come on top of these numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The LLMs of the paper's recipes, as their hub config.json files give them (architecture keys only).
# Qwen3-0.6B: huggingface.co/Qwen/Qwen3-0.6B/blob/main/config.json; Qwen2.5-7B-Instruct:
# huggingface.co/Qwen/Qwen2.5-7B-Instruct/blob/main/config.json; Vicuna-7B v1.5 (Llama-2-7B's architecture):
# huggingface.co/lmsys/vicuna-7b-v1.5/blob/main/config.json and huggingface.co/meta-llama/Llama-2-7b-hf.
_LLAMA2_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False,
                  max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu")


@dataclasses.dataclass(frozen=True)
class HubLLM:
    config: dict  # architecture keys of the hub config.json
    tokenizer_len: int  # len(AutoTokenizer.from_pretrained(id)): base vocabulary + the tokenizer's added tokens
    tokens: frozenset[str] = frozenset()  # special strings registry templates use that the tokenizer already has
    has_pad: bool = True  # the tokenizer has a pad token (else the vocabulary extension adds <pad>)
    has_chat_template: bool = True


_QWEN_CHAT = frozenset({"<|im_start|>", "<|im_end|>"})
HUB_LLMS: dict[str, HubLLM] = {
    "Qwen/Qwen3-0.6B": HubLLM(
        dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
             num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
             tie_word_embeddings=True, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000,
             attention_bias=False, hidden_act="silu"),
        tokenizer_len=151669, tokens=_QWEN_CHAT),
    "Qwen/Qwen2.5-7B-Instruct": HubLLM(
        dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
             num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
             max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0, hidden_act="silu"),
        tokenizer_len=151665, tokens=_QWEN_CHAT),
    # FastChat saves Vicuna's tokenizer with pad = <unk>; the base Llama-2 tokenizer has no pad token.
    "lmsys/vicuna-7b-v1.5": HubLLM(_LLAMA2_7B, tokenizer_len=32000, has_chat_template=False),
    "meta-llama/Llama-2-7b-hf": HubLLM(_LLAMA2_7B, tokenizer_len=32000, has_pad=False, has_chat_template=False),
}

# Vision towers of the fixed-resolution SigLIP2 checkpoints (vision_config of huggingface.co/google/
# siglip2-so400m-patch16-256/blob/main/config.json and of its -512 sibling; the rest are SiglipVisionConfig defaults).
_SO400M = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
               num_attention_heads=16, patch_size=16, num_channels=3, hidden_act="gelu_pytorch_tanh",
               layer_norm_eps=1e-6)
HUB_ENCODERS: dict[str, dict] = {
    "google/siglip2-so400m-patch16-256": {**_SO400M, "image_size": 256},
    "google/siglip2-so400m-patch16-512": {**_SO400M, "image_size": 512},
}

TOKENIZER_STAGES = ("tokenizer-stage1", "tokenizer-stage2")
UNIFIED_STAGES = ("unified-align", "unified-sft", "unified-gen")
MAX_DEPTH = 8  # configs followed through `output_dir/final` references (a loop is an error, not a hang)
GIB = 2**30


@dataclasses.dataclass
class PartSize:
    name: str
    params: int
    trainable: int


@dataclasses.dataclass
class ModelSize:
    """Parameter counts of the module a config trains (see the module docstring)."""

    config: str
    stage: str
    deepspeed: str | None
    parts: list[PartSize]
    total: int
    trainable: int
    embedding: int  # LLM token-embedding rows: the input table and an untied output head
    buffers: int
    facts: dict[str, Any]  # architecture facts: llm_layers, llm_hidden, vocab_size, encoder_layers, ...

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    def memory(self, gpus: int = 8) -> dict[str, dict[str, float]]:
        return zero_memory(self.total, self.trainable, self.buffers, gpus)

    def to_dict(self, gpus: int = 8) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "non_embedding": self.non_embedding, "gpus": gpus,
                "memory_bytes": self.memory(gpus)}


def zero_memory(params: int, trainable: int, buffers: int, gpus: int) -> dict[str, dict[str, float]]:
    """Bytes per process of weights (bf16), gradients (bf16), optimizer states (fp32 master + 2 Adam moments) and
    buffers (bf16) under each ZeRO stage, for `gpus` processes; `total` sums them, `on` says where they live."""
    if gpus <= 0:
        raise ValueError(f"gpus must be > 0, got {gpus}")
    w, g, o, b = 2.0 * params, 2.0 * trainable, 12.0 * trainable, 2.0 * buffers
    rows = {"zero0": (w, g, o), "zero1": (w, g, o / gpus), "zero2": (w, g / gpus, o / gpus),
            "zero3": (w / gpus, g / gpus, o / gpus), "zero3_offload": (w / gpus, g / gpus, o / gpus)}
    out = {}
    for name, (wi, gi, oi) in rows.items():
        out[name] = {"weights": wi, "grads": gi, "optimizer": oi, "buffers": b, "total": wi + gi + oi + b,
                     "on": "cpu" if name == "zero3_offload" else "gpu"}
    return out


# --------------------------------------------------------------------------------------------- config resolution


def _stage_of(path: Path, stage: str | None) -> str:
    from vqrae.train.stages import stage_names

    name = stage or path.stem
    if name not in stage_names():
        raise ValueError(f"config {path}: cannot tell its stage from the file name '{path.stem}'; give the stage "
                         f"(one of {', '.join(TOKENIZER_STAGES + UNIFIED_STAGES)})")
    if name not in TOKENIZER_STAGES + UNIFIED_STAGES:
        raise ValueError(f"stage '{name}' is not sized by model-size (only {', '.join(TOKENIZER_STAGES + UNIFIED_STAGES)})")
    return name


def _load(path: str | Path, stage: str | None = None, overrides: Sequence[str] = ()) -> tuple[str, Any, Path]:
    from vqrae.train import load_config
    from vqrae.train.config import resolve_config_path
    from vqrae.train.stages import get_stage

    file = resolve_config_path(path)
    name = _stage_of(file, stage)
    return name, load_config(get_stage(name).config_class, file, overrides), file


def _producer(folder: str, key: str, near: Path, depth: int) -> tuple[str, Any, Path]:
    """The config (beside `near`, else shipped) whose run writes `folder` as its `output_dir/final`."""
    from vqrae.train.config import CONFIG_DIR, read_config_file

    if depth >= MAX_DEPTH:
        raise ValueError(f"config key '{key}' ({folder}): more than {MAX_DEPTH} configs deep (a loop of output_dir "
                         "references?)")
    target = os.path.abspath(folder)  # paths in configs are relative to where `vqrae train` runs
    for file in [*sorted(near.parent.glob("*.yaml")), *sorted(CONFIG_DIR.glob("*/*.yaml"))]:
        try:
            data = read_config_file(file)
        except (OSError, ValueError):
            continue
        out = data.get("output_dir") if isinstance(data, dict) else None
        sized = file.stem in TOKENIZER_STAGES + UNIFIED_STAGES  # named after its stage, as configs are
        if sized and isinstance(out, str) and os.path.abspath(os.path.join(out, "final")) == target:
            return _load(file)
    raise FileNotFoundError(f"config key '{key}' in {near}: {folder} is no folder, and no config beside it or shipped "
                            "writes it (output_dir + /final); train that stage first or give a folder")


def _encoder_config(encoder_type: str, encoder: str | None, image_size: int | None):
    from vqrae.tokenizer.encoders import resolve_encoder

    if encoder in HUB_ENCODERS:
        return resolve_encoder(encoder_type, None, dict(HUB_ENCODERS[encoder]), image_size)
    if encoder is not None and os.path.isdir(encoder):
        return resolve_encoder(encoder_type, encoder, None, image_size)
    raise ValueError(f"config key 'encoder' ({encoder}): not a local folder and not one of the built-in encoder "
                     f"architectures ({', '.join(HUB_ENCODERS)})")


def tokenizer_config(cfg, where: Path, depth: int = 0):
    """The VQRAEConfig a tokenizer-stage config trains (fresh on `encoder`, or the `tokenizer` folder's)."""
    from vqrae.tokenizer import VQRAEConfig
    from vqrae.train.stages.tokenizer import RUNTIME_MODEL_KEYS

    if cfg.tokenizer:
        vq = _vqrae_config_at(cfg.tokenizer, "tokenizer", where, depth + 1)
        for key in RUNTIME_MODEL_KEYS:  # what the stage applies to a loaded tokenizer
            if getattr(cfg.model, key) is not None:
                setattr(vq, key, getattr(cfg.model, key))
        return vq
    spec = _encoder_config(cfg.encoder_type, cfg.encoder, cfg.image_size)
    return VQRAEConfig(encoder_type=cfg.encoder_type, encoder_config=spec.config, encoder_name_or_path=cfg.encoder,
                       image_size=spec.image_size, image_mean=list(spec.image_mean), image_std=list(spec.image_std),
                       **cfg.vqrae_kwargs())


def _config_file(folder: str, key: str) -> str | None:
    """`folder`/config.json if `folder` exists (a folder without one is an error), None if it does not exist."""
    if not os.path.isdir(folder):
        return None
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"config key '{key}': {folder} has no config.json")
    return file


def _vqrae_config_at(folder: str, key: str, where: Path, depth: int):
    from vqrae.tokenizer import VQRAEConfig

    if _config_file(folder, key):
        return VQRAEConfig.from_pretrained(folder)
    stage, cfg, file = _producer(folder, key, where, depth)
    if stage not in TOKENIZER_STAGES:
        raise ValueError(f"config key '{key}' ({folder}) is written by {file}, a {stage} run, not a tokenizer stage")
    return tokenizer_config(cfg, file, depth)


def _new_token_count(template: str, tokens: frozenset[str] | set[str], has_pad: bool,
                     has_chat_template: bool) -> int:
    """How many ids `extend_vocabulary` adds to the text tokenizer: <image> <boi> <eoi> <uncond>, the template's
    special strings it lacks, and <pad> when it has none. A template derived from the tokenizer's own chat template
    (`auto`) uses strings the tokenizer already has."""
    from vqrae.data.records import IMAGE_TOKEN
    from vqrae.unified_model.templates import AUTO, AUTO_FALLBACK, get_template
    from vqrae.unified_model.vocab import BOI_TOKEN, EOI_TOKEN, UNCOND_TOKEN

    if template == AUTO:
        specials = () if has_chat_template else get_template(AUTO_FALLBACK).special_tokens
    else:
        specials = get_template(template).special_tokens
    wanted = dict.fromkeys([IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN, UNCOND_TOKEN, *specials])
    return sum(s not in tokens for s in wanted) + (0 if has_pad else 1)


def _llm_config(name: str, template: str):
    """(the LLM's config, how many text ids the tokenizer has after the vocabulary extension)."""
    from transformers import AutoConfig

    if name in HUB_LLMS:
        hub = HUB_LLMS[name]
        config = AutoConfig.for_model(**hub.config)
        return config, hub.tokenizer_len + _new_token_count(template, hub.tokens, hub.has_pad, hub.has_chat_template)
    if os.path.isdir(name):
        from transformers import AutoTokenizer

        from vqrae.unified_model.templates import has_chat_template

        tok = AutoTokenizer.from_pretrained(name)
        new = _new_token_count(template, set(tok.get_vocab()), tok.pad_token is not None, has_chat_template(tok))
        return AutoConfig.from_pretrained(name), len(tok) + new
    raise ValueError(f"config key 'llm' ({name}): not a local folder and not one of the built-in LLM architectures "
                     f"({', '.join(HUB_LLMS)})")


def unified_config(cfg, where: Path, depth: int = 0):
    """The UnifiedConfig a unified-stage config trains (the `init` folder's, or built from `llm` + `vqrae`)."""
    from vqrae.tokenizer import VQRAE
    from vqrae.unified_model import UnifiedConfig

    if cfg.init:
        if _config_file(cfg.init, "init"):
            return UnifiedConfig.from_pretrained(cfg.init)
        stage, parent, file = _producer(cfg.init, "init", where, depth + 1)
        if stage not in UNIFIED_STAGES:
            raise ValueError(f"config key 'init' ({cfg.init}) is written by {file}, a {stage} run, not a unified stage")
        return unified_config(parent, file, depth + 1)
    vq_config = _vqrae_config_at(cfg.vqrae, "vqrae", where, depth + 1)
    with torch.device("meta"):
        vq = VQRAE(vq_config)  # for its feature width and grid
    text_config, text_ids = _llm_config(cfg.llm, cfg.template)
    code_offset = max(text_ids, text_config.vocab_size)  # as extend_vocabulary lays the ids out
    text_config.vocab_size = code_offset + vq_config.codebook_size
    grid = list(vq.grid_size)
    return UnifiedConfig(text_config=text_config, vqrae_config=vq_config, template=cfg.template,
                         projector_type=cfg.projector_type, feature_dim=vq.feature_dim,
                         hidden_size=text_config.hidden_size, num_image_features=grid[0] * grid[1], grid_size=grid,
                         codebook_size=vq_config.codebook_size, code_offset=code_offset, code_init=cfg.code_init)


# ------------------------------------------------------------------------------------------------- building


class LpipsVGGShape(nn.Module):
    """What `lpips_vgg_weights` loads, as shapes: torchvision's VGG16 conv trunk and LPIPS's five 1x1 heads."""

    def __init__(self):
        super().__init__()
        from torchvision.models import vgg16

        self.net = vgg16(weights=None).features
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in (64, 128, 256, 512, 512))
        self.requires_grad_(False)


@dataclasses.dataclass
class MetaModel:
    """What `build_on_meta` returns: the stage, its config (as the stage trains it), the module on the meta device
    and the parameters the stage's `param_groups` would hand the optimizer."""

    source: str
    stage: str
    config: Any
    module: nn.Module
    trainable: list[nn.Parameter]


def build_on_meta(config: str | Path, stage: str | None = None, overrides: Sequence[str] = ()) -> MetaModel:
    """The module `config` trains (its stage: `stage`, or the file name), every tensor on the meta device."""
    from vqrae.train.stages import get_stage

    name, cfg, file = _load(config, stage, overrides)
    runner = get_stage(name)(cfg)  # the stage object: its config as it trains, its param_groups
    cfg = runner.config
    if name in TOKENIZER_STAGES:
        from vqrae.tokenizer import VQRAE
        from vqrae.train.stages.tokenizer import TokenizerTrainer

        vq_config = tokenizer_config(cfg, file)
        with torch.device("meta"):
            module = TokenizerTrainer(VQRAE(vq_config), dataclasses.replace(cfg, lpips_vgg_weights=None))
            if cfg.lpips_vgg_weights:  # the file need not exist to be sized
                module.perceptual = LpipsVGGShape()
    else:
        from vqrae.unified_model import UnifiedModel

        ucfg = unified_config(cfg, file)
        with torch.device("meta"):
            module = UnifiedModel(ucfg)
            module.set_trainable(projector=runner.train_projector, llm=runner.train_llm and not cfg.lora.r,
                                 vqrae=False)
            if cfg.lora.r:
                from vqrae.unified_model.lora import add_lora

                add_lora(module, cfg.lora)
    trainable = [p for g in runner.param_groups(module) for p in g["params"]]
    return MetaModel(str(config), name, cfg, module, trainable)


def _numel(tensors) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        seen.setdefault(id(t), t.numel())
    return sum(seen.values())


def _facts(module: nn.Module) -> dict[str, Any]:
    from vqrae.tokenizer import VQRAE

    vq = next(m for m in module.modules() if isinstance(m, VQRAE))
    enc, dec = vq.encoder, vq.decoder
    facts: dict[str, Any] = {
        "encoder_layers": enc.depth, "encoder_width": enc.feature_dim, "encoder_heads": enc.num_heads,
        "encoder_params": _numel(enc.parameters()), "image_size": vq.image_size, "patch_size": vq.patch_size,
        "image_tokens": vq.num_tokens, "codebook_size": vq.config.codebook_size,
        "codebook_dim": vq.config.codebook_dim, "decoder_layers": len(dec.blocks),
        "decoder_width": dec.embed.out_features, "decoder_params": _numel(dec.parameters()),
    }
    llm = getattr(module, "llm", None)
    if llm is not None:
        c = llm.config
        facts.update(llm_type=c.model_type, llm_layers=c.num_hidden_layers, llm_hidden=c.hidden_size,
                     llm_heads=c.num_attention_heads, llm_kv_heads=c.num_key_value_heads,
                     llm_intermediate=c.intermediate_size, vocab_size=c.vocab_size,
                     code_offset=module.config.code_offset, tied_embeddings=bool(c.tie_word_embeddings),
                     llm_params=_numel(llm.parameters()))
    return facts


def model_size(config: str | Path, stage: str | None = None, overrides: Sequence[str] = ()) -> ModelSize:
    """Parameter counts (total, trainable in the config's stage, embedding rows, per part) of what `config` trains."""
    return measure(build_on_meta(config, stage, overrides))


def measure(built: MetaModel) -> ModelSize:
    """The counts of a model `build_on_meta` built."""
    from vqrae.tokenizer import VQRAE

    module, trainable = built.module, built.trainable
    ids = {id(p) for p in trainable}
    parts, seen = [], set()
    for child_name, child in module.named_children():
        subs = child.named_children() if isinstance(child, VQRAE) else [("", child)]
        for sub_name, sub in subs:
            params = [p for p in sub.parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                parts.append(PartSize(f"{child_name}.{sub_name}" if sub_name else child_name, _numel(params),
                                      _numel(p for p in params if id(p) in ids)))
    embedding = 0
    llm = getattr(module, "llm", None)
    if llm is not None:
        emb, head = llm.get_input_embeddings().weight, llm.get_output_embeddings()
        embedding = _numel([emb] + ([head.weight] if head is not None else []))
    return ModelSize(config=built.source, stage=built.stage, deepspeed=built.config.deepspeed, parts=parts,
                     total=_numel(module.parameters()), trainable=_numel(trainable), embedding=embedding,
                     buffers=_numel(module.buffers()), facts=_facts(module))


# --------------------------------------------------------------------------------------------------- report


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else str(n)


def format_report(size: ModelSize, gpus: int = 8) -> str:
    f = size.facts
    lines = [f"{size.config}: stage {size.stage}, deepspeed {size.deepspeed or 'none'}",
             f"{'part':<22}{'params':>12}{'trainable':>12}"]
    lines += [f"{p.name:<22}{_count(p.params):>12}{_count(p.trainable):>12}" for p in size.parts]
    lines.append(f"{'total':<22}{_count(size.total):>12}{_count(size.trainable):>12}")
    if size.embedding:
        lines.append(f"non-embedding {_count(size.non_embedding)} (LLM token-embedding rows: {_count(size.embedding)})")
    lines.append(f"buffers {_count(size.buffers)} (SimVQ's frozen codebook and the like)")
    if "llm_type" in f:
        lines.append(f"LLM {f['llm_type']}: {f['llm_layers']} layers x {f['llm_hidden']}, {f['llm_heads']} heads "
                     f"({f['llm_kv_heads']} kv), MLP {f['llm_intermediate']}, vocab {f['vocab_size']} "
                     f"(codes from id {f['code_offset']}), embeddings {'tied' if f['tied_embeddings'] else 'untied'}")
    lines.append(f"VQRAE: encoder {f['encoder_layers']} x {f['encoder_width']} ({_count(f['encoder_params'])}), "
                 f"{f['image_size']} px / patch {f['patch_size']} = {f['image_tokens']} tokens, codebook "
                 f"{f['codebook_size']} x {f['codebook_dim']}, decoder {f['decoder_layers']} x {f['decoder_width']} "
                 f"({_count(f['decoder_params'])})")
    lines.append(f"memory per process, {gpus} processes, bf16 weights + fp32 AdamW (GiB):")
    lines.append(f"{'':<16}{'weights':>9}{'grads':>9}{'optim':>9}{'buffers':>9}{'total':>9}")
    for name, m in size.memory(gpus).items():
        mark = " <- this config" if name == (size.deepspeed or "") else ""
        where = " (CPU)" if m["on"] == "cpu" else ""
        lines.append(f"{name:<16}" + "".join(f"{m[k] / GIB:>9.2f}" for k in ("weights", "grads", "optimizer",
                                                                          "buffers", "total")) + where + mark)
    lines.append("activations, logits, communication buffers and fragmentation come on top")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="a training config file or shipped name (e.g. paper/unified-gen)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as for vqrae train")
    p.add_argument("--stage", default=None, help="the config's stage (default: its file name, e.g. unified-gen)")
    p.add_argument("--gpus", type=int, default=8, help="processes the ZeRO memory is split over (default 8)")
    p.add_argument("--json", action="store_true", help="print the counts and memory as JSON")


def main(args: argparse.Namespace) -> int:
    if args.gpus <= 0:
        raise ValueError(f"--gpus must be > 0, got {args.gpus}")
    size = model_size(args.config, args.stage, args.overrides)
    print(json.dumps(size.to_dict(args.gpus), indent=2) if args.json else format_report(size, args.gpus))
    return 0
