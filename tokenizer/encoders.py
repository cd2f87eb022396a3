"""Encoder adapters: one interface over SigLIP, DINOv2 and timm ViTs.

Every adapter maps pixels (B, 3, H, W) in [0, 1] to the last-layer patch features (B, N, d): the encoder's own
normalisation is applied inside, and CLS / register tokens are dropped. An adapter is built from an inline
architecture dict (random init), which is what VQRAEConfig stores; `load_encoder_weights` then fills it from a local
folder or hub id. Keeping construction and weight loading apart is what lets `VQRAE.from_pretrained` rebuild the
encoder from config.json alone, under transformers' meta-device initialisation, and then load every weight from
model.safetensors.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class EncoderSpec:
    """What VQRAEConfig needs to know about an encoder: its inline architecture and normalisation."""

    config: dict
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    image_size: int


class VisionEncoder(nn.Module):
    """Base adapter: normalise, run the backbone, drop prefix tokens."""

    feature_dim: int
    patch_size: int
    depth: int
    num_heads: int

    def __init__(self, image_mean, image_std):
        super().__init__()
        # Plain lists, not buffers: nothing to save, nothing for meta-device init to leave empty.
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = pixels.new_tensor(self.image_mean).view(1, 3, 1, 1)
        std = pixels.new_tensor(self.image_std).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class HFVisionEncoder(VisionEncoder):
    """SigLIP (and fixed-resolution SigLIP2) and DINOv2 (with or without registers) from Hugging Face."""

    def __init__(self, config: dict, image_mean, image_std):
        super().__init__(image_mean, image_std)
        from transformers import AutoConfig, AutoModel

        config = dict(config)
        model_type = config.pop("model_type")
        if model_type == "siglip_vision_model":
            config["vision_use_head"] = False  # the pooling head is not part of the patch features
        hf_config = AutoConfig.for_model(model_type, **config)
        self.model = AutoModel.from_config(hf_config)
        self.num_prefix_tokens = 0 if model_type == "siglip_vision_model" else 1 + getattr(
            hf_config, "num_register_tokens", 0)
        self.feature_dim = hf_config.hidden_size
        self.patch_size = hf_config.patch_size
        self.depth = hf_config.num_hidden_layers
        self.num_heads = hf_config.num_attention_heads

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=self.normalize(pixels))
        return out.last_hidden_state[:, self.num_prefix_tokens:]


class TimmVisionEncoder(VisionEncoder):
    """timm ViTs (`forward_features`, prefix tokens dropped)."""

    def __init__(self, config: dict, image_mean, image_std):
        super().__init__(image_mean, image_std)
        import timm

        kwargs = {**config.get("kwargs", {}), "num_classes": 0}  # features only, no classifier head
        self.model = timm.create_model(config["model_name"], pretrained=False, **kwargs)
        self.num_prefix_tokens = getattr(self.model, "num_prefix_tokens", 1)
        self.feature_dim = self.model.num_features
        patch = self.model.patch_embed.patch_size
        self.patch_size = patch[0] if isinstance(patch, (tuple, list)) else patch
        self.depth = len(self.model.blocks)
        self.num_heads = self.model.blocks[0].attn.num_heads

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(self.normalize(pixels))[:, self.num_prefix_tokens:]


def build_encoder(encoder_type: str, config: dict, image_mean, image_std) -> VisionEncoder:
    if not config:
        raise ValueError(f"the {encoder_type} encoder has no architecture config: build the tokenizer with "
                         "VQRAE.from_encoder(...) or give encoder_config")
    if encoder_type in ("siglip", "dinov2"):
        return HFVisionEncoder(config, image_mean, image_std)
    if encoder_type == "timm":
        return TimmVisionEncoder(config, image_mean, image_std)
    raise ValueError(f"unknown encoder_type {encoder_type!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Resolving an encoder from a local folder, a hub id or an inline config


@contextmanager
def _quiet_transformers():
    """Silence transformers' warnings while reading a checkpoint: a full image-text checkpoint makes it report every
    unused text-tower tensor, and building its config validates default text settings we never use."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _hf_vision_config(encoder_type: str, name_or_path: str):
    from transformers import AutoConfig

    if name_or_path.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(name_or_path)):
        raise FileNotFoundError(f"{encoder_type} encoder folder not found: {name_or_path}")
    try:
        with _quiet_transformers():
            cfg = AutoConfig.from_pretrained(name_or_path)
    except OSError as exc:
        raise OSError(f"cannot load a {encoder_type} encoder config from {name_or_path!r}: "
                      f"{str(exc).splitlines()[0]}") from None
    if cfg.model_type == "siglip2":
        raise ValueError(f"{name_or_path!r} is a NaFlex SigLIP2 checkpoint (variable resolution); use a "
                         "fixed-resolution SigLIP2 checkpoint (model_type 'siglip'), e.g. google/siglip2-so400m-patch16-256")
    if cfg.model_type == "siglip":  # a full image-text checkpoint: keep the vision tower
        cfg = cfg.vision_config
    expected = {"siglip": ("siglip_vision_model",), "dinov2": ("dinov2", "dinov2_with_registers")}[encoder_type]
    if cfg.model_type not in expected:
        raise ValueError(f"{name_or_path!r} holds a {cfg.model_type!r} model, not a {encoder_type} encoder")
    return cfg


def resolve_encoder(encoder_type: str, name_or_path: str | None = None, config: dict | None = None,
                    image_size: int | None = None) -> EncoderSpec:
    """Inline architecture + normalisation for an encoder given by path/hub id or by an inline config dict."""
    if encoder_type == "timm":
        return _resolve_timm(name_or_path, config, image_size)
    if encoder_type not in ("siglip", "dinov2"):
        raise ValueError(f"unknown encoder_type {encoder_type!r}")
    if config is None:
        if name_or_path is None:
            raise ValueError(f"a {encoder_type} encoder needs a path/hub id or an inline config")
        hf_cfg = _hf_vision_config(encoder_type, name_or_path)
        config = hf_cfg.to_diff_dict()
        config["model_type"] = hf_cfg.model_type
    config = {k: v for k, v in dict(config).items()
              if k not in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype")}
    config.setdefault("model_type", "siglip_vision_model" if encoder_type == "siglip" else "dinov2")
    if encoder_type == "siglip":
        size = image_size or config.get("image_size", 224)
        if size != config.get("image_size", 224):
            # SigLIP's learned position table is sized for its own resolution; interpolating it silently would
            # change the features the LLM sees, so we refuse instead.
            raise ValueError(f"this SigLIP encoder takes {config.get('image_size', 224)} px images, not {size}")
        mean, std = SIGLIP_MEAN, SIGLIP_STD
    else:
        size = image_size or 224  # DINOv2 interpolates its position table to any multiple of the patch size
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    mean, std = _processor_mean_std(name_or_path) or (mean, std)
    return EncoderSpec(config, tuple(mean), tuple(std), size)


def _timm_source(name_or_path: str) -> str:
    """timm's own model-source syntax: a local folder becomes `local-dir:PATH`; names and `hf-hub:` ids pass."""
    return f"local-dir:{name_or_path}" if os.path.isdir(name_or_path) else name_or_path


def _resolve_timm(name_or_path: str | None, config: dict | None, image_size: int | None) -> EncoderSpec:
    import json

    import timm

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if config is None:
        if name_or_path is None:
            raise ValueError("a timm encoder needs a model name, hub id, local folder or inline config")
        if os.path.isdir(name_or_path):  # a folder written by timm's save_for_hf: config.json names the architecture
            cfg_file = os.path.join(name_or_path, "config.json")
            if not os.path.isfile(cfg_file):
                raise FileNotFoundError(f"{name_or_path} has no config.json (expected a timm save_for_hf folder)")
            with open(cfg_file) as f:
                cfg = json.load(f)
            config = {"model_name": cfg["architecture"], "kwargs": dict(cfg.get("model_args", {}))}
            pcfg = cfg.get("pretrained_cfg", {})
            mean, std = tuple(pcfg.get("mean", mean)), tuple(pcfg.get("std", std))
        else:
            config = {"model_name": name_or_path.split(":")[-1], "kwargs": {}}
            pcfg = timm.models.get_pretrained_cfg(config["model_name"])
            if pcfg is not None:
                mean, std = tuple(pcfg.mean), tuple(pcfg.std)
    config = {"model_name": config["model_name"], "kwargs": dict(config.get("kwargs", {}))}
    if image_size is not None:
        config["kwargs"]["img_size"] = image_size
    return EncoderSpec(config, mean, std, config["kwargs"].get("img_size", 224))


def _processor_mean_std(name_or_path: str | None):
    """The checkpoint's own normalisation, when a local folder carries a preprocessor_config.json."""
    if not name_or_path or not os.path.isdir(name_or_path):
        return None
    path = os.path.join(name_or_path, "preprocessor_config.json")
    if not os.path.isfile(path):
        return None
    import json

    with open(path) as f:
        proc = json.load(f)
    if "image_mean" in proc and "image_std" in proc:
        return tuple(proc["image_mean"]), tuple(proc["image_std"])
    return None


def load_encoder_weights(encoder: VisionEncoder, encoder_type: str, name_or_path: str) -> None:
    """Fill a freshly built adapter with pretrained weights from a local folder or hub id."""
    if encoder_type == "timm":
        import timm

        src = timm.create_model(_timm_source(name_or_path), pretrained=True, num_classes=0,
                                img_size=encoder.model.patch_embed.img_size)
        missing, unexpected = encoder.model.load_state_dict(src.state_dict(), strict=False)
    else:
        from transformers import AutoModel

        cfg = _hf_vision_config(encoder_type, name_or_path)
        if cfg.model_type == "siglip_vision_model":
            cfg.vision_use_head = False
        with _quiet_transformers():
            src = AutoModel.from_pretrained(name_or_path, config=cfg)
        missing, unexpected = encoder.model.load_state_dict(src.state_dict(), strict=False)
    if missing:
        raise ValueError(f"encoder weights from {name_or_path!r} miss {len(missing)} tensors, e.g. {missing[0]}")
    if unexpected:
        logger.info("ignored %d unused encoder tensors from %s", len(unexpected), name_or_path)
