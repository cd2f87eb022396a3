"""Tiny tokenizer configurations for tests and CPU smoke runs (random weights, built in well under a second)."""

from __future__ import annotations

TINY_SIGLIP = {
    "model_type": "siglip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}

TINY_DINOV2 = {
    "model_type": "dinov2",
    "hidden_size": 32,
    "intermediate_size": 64,  # unused by Dinov2 (mlp_ratio), kept for symmetry
    "mlp_ratio": 2,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}

TINY_TIMM = {"model_name": "vit_tiny_patch16_224",
             "kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}}


def tiny_vqrae_config(encoder_type: str = "siglip", **overrides):
    """A VQRAEConfig for a 32 px, 4x4-token tokenizer with a width-32 encoder and a 64 x 48 codebook."""
    from .encoders import resolve_encoder
    from .modeling import VQRAEConfig

    inline = {"siglip": TINY_SIGLIP, "dinov2": TINY_DINOV2, "timm": TINY_TIMM}[encoder_type]
    spec = resolve_encoder(encoder_type, config=inline, image_size=32)
    kwargs = dict(encoder_type=encoder_type, encoder_config=spec.config, image_size=spec.image_size,
                  image_mean=list(spec.image_mean), image_std=list(spec.image_std),
                  codebook_size=64, codebook_dim=48)
    kwargs.update(overrides)
    return VQRAEConfig(**kwargs)


def save_tiny_siglip(folder, seed: int = 0) -> None:
    """A random width-32 SigLIP vision tower (32 px, patch 8) saved as a Hugging Face folder: an `encoder=` for
    tokenizer-stage tests that need no trained encoder."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    config = SiglipVisionConfig(**{k: v for k, v in TINY_SIGLIP.items() if k != "model_type"})
    SiglipVisionModel(config).save_pretrained(folder)
