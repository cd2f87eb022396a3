"""VQRAEConfig: everything needed to rebuild a VQRAE tokenizer from its folder, with nothing else.

The encoder's own architecture is stored inline (`encoder_config`), so a saved tokenizer never needs the path or hub
id it was first built from: `encoder_name_or_path` is kept only as a record of where the weights came from.
"""

from __future__ import annotations

import logging
import warnings

from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

ENCODER_TYPES = ("siglip", "dinov2", "timm")
QUANTIZERS = ("simvq", "patch-kmeans")


class VQRAEConfig(PretrainedConfig):
    r"""
    Args:
        encoder_type: `"siglip"` (Hugging Face SigLIP, and the fixed-resolution SigLIP2 checkpoints, which use the
            same classes), `"dinov2"` (with or without registers) or `"timm"` (timm ViTs).
        encoder_config: the encoder's architecture as a dict: a Hugging Face vision config dict for siglip/dinov2,
            `{"model_name": ..., "kwargs": {...}}` for timm. Filled in by `VQRAE.from_encoder`.
        encoder_name_or_path: where the encoder weights came from (informational).
        image_size: square input resolution in pixels.
        image_mean, image_std: the encoder's input normalisation (applied inside the encoder adapter).
        freeze_encoder: stage 1 freezes the encoder; stage 2 trains it at a low learning rate.
        codebook_size: K, number of codes.
        codebook_dim: e, dimension of the frozen random codebook and of the learnable e x e map. Must be >= the
            encoder width d for good codebook usage (the paper's ablation); smaller values warn.
        commitment_weight: beta in ||sg(z) - q||^2 + beta ||z - sg(q)||^2.
        l2_normalize: match codes by cosine instead of L2 (features and codes l2-normalised, as LlamaGen's VQ
            does). Not the paper's setting (off by default); it keeps small worlds from using only the codes of
            largest norm.
        lookup_memory_mb: memory budget for the nearest-code search; the (rows x K) distance matrix is built in
            chunks of rows that fit in it.
        decoder_dim, decoder_depth, decoder_heads: ViT decoder size; `None` mirrors the encoder.
        decoder_mlp_ratio: MLP width / decoder_dim.
        decoder_gradient_checkpointing: recompute decoder blocks in the backward pass to save activation memory.
            (Not named `gradient_checkpointing`: transformers' `post_init` consumes a config attribute of that name
            and deletes it, so a saved tokenizer would lose the setting. The old key is still read.)
        codebook_seed: seed of the frozen random codebook C, drawn from its own generator: the same config gives
            the same codebook in every process, whatever the global RNG state.
        quantizer: `"simvq"` (the paper's: nearest code in the encoder's feature space) or `"patch-kmeans"`
            (codes placed by a per-token pixel head, see tokenizer/patch_kmeans.py; `codebook_dim`, `l2_normalize`
            `codebook_seed` and `commitment_weight` do not apply to it).
        quantizer_head_dim: hidden width of the patch-kmeans pixel head.
        ema_decay: decay of the patch-kmeans codebook's EMA statistics.
        dead_code_threshold: a patch-kmeans code whose EMA count (tokens per step) falls below this is restarted.
    """

    model_type = "vqrae"

    def __init__(
        self,
        encoder_type: str = "siglip",
        encoder_config: dict | None = None,
        encoder_name_or_path: str | None = None,
        image_size: int = 256,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        freeze_encoder: bool = True,
        codebook_size: int = 16384,
        codebook_dim: int = 1536,
        commitment_weight: float = 0.25,
        l2_normalize: bool = False,
        lookup_memory_mb: int = 256,
        decoder_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_heads: int | None = None,
        decoder_mlp_ratio: float = 4.0,
        decoder_gradient_checkpointing: bool = False,
        codebook_seed: int = 0,
        quantizer: str = "simvq",
        quantizer_head_dim: int = 512,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.25,
        **kwargs,
    ):
        if "gradient_checkpointing" in kwargs:  # the key's name before it was renamed (see the docstring)
            decoder_gradient_checkpointing = bool(kwargs.pop("gradient_checkpointing")) or decoder_gradient_checkpointing
        if encoder_type not in ENCODER_TYPES:
            raise ValueError(f"encoder_type must be one of {ENCODER_TYPES}, got {encoder_type!r}")
        for name, value in (("image_size", image_size), ("codebook_size", codebook_size),
                            ("codebook_dim", codebook_dim), ("lookup_memory_mb", lookup_memory_mb)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(codebook_seed, int) or isinstance(codebook_seed, bool) or codebook_seed < 0:
            raise ValueError(f"codebook_seed must be a non-negative integer, got {codebook_seed!r}")
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
        if not isinstance(quantizer_head_dim, int) or quantizer_head_dim <= 0:
            raise ValueError(f"quantizer_head_dim must be a positive integer, got {quantizer_head_dim!r}")
        if not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {ema_decay!r}")
        if dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold!r}")
        if commitment_weight < 0:
            raise ValueError(f"commitment_weight must be >= 0, got {commitment_weight}")
        self.encoder_type = encoder_type
        self.encoder_config = dict(encoder_config or {})
        self.encoder_name_or_path = encoder_name_or_path
        self.image_size = image_size
        self.image_mean = list(image_mean) if image_mean is not None else None
        self.image_std = list(image_std) if image_std is not None else None
        self.freeze_encoder = freeze_encoder
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.commitment_weight = commitment_weight
        self.l2_normalize = l2_normalize
        self.lookup_memory_mb = lookup_memory_mb
        self.decoder_dim = decoder_dim
        self.decoder_depth = decoder_depth
        self.decoder_heads = decoder_heads
        self.decoder_mlp_ratio = decoder_mlp_ratio
        self.decoder_gradient_checkpointing = bool(decoder_gradient_checkpointing)
        self.codebook_seed = codebook_seed
        self.quantizer = quantizer
        self.quantizer_head_dim = quantizer_head_dim
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        super().__init__(**kwargs)


def warn_small_codebook_dim(codebook_dim: int, feature_dim: int) -> None:
    if codebook_dim < feature_dim:
        warnings.warn(
            f"codebook_dim={codebook_dim} is smaller than the encoder width {feature_dim}: the VQRAE paper finds such "
            "codebooks under-used and slow to converge (use codebook_dim >= encoder width)",
            stacklevel=3,
        )
