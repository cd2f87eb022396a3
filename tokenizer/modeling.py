"""VQRAE: encoder adapter -> SimVQ -> ViT decoder, as one Hugging Face model.

    feats  = vq.encode(pixels)     # (B, N, d) continuous features for understanding
    codes  = vq.tokenize(pixels)   # (B, h, w) discrete codes for generation
    images = vq.decode(codes)      # (B, 3, H, W) in [0, 1]
    out    = vq(pixels)            # training: reconstruction, codes, features, quantizer loss

The quantizer's out-projection maps codes back into the encoder's feature space (d), and the decoder starts with
a linear map from there to its own width; composed, these are the paper's "linear e -> d_dec". Going through the
feature space lets `decode_features` take continuous encoder features (RAE-style) as well as codes, and gives
`code_features()`: every code as a feature vector, which the unified model pushes through its projector to
initialise the LLM's new image-token embeddings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModel, PreTrainedModel

from .configuration import VQRAEConfig, warn_small_codebook_dim
from .decoder import ViTDecoder, to_patches
from .encoders import build_encoder, load_encoder_weights, resolve_encoder
from .patch_kmeans import PatchKMeansVQ
from .quantizer import SimVQ

logger = logging.getLogger(__name__)


@dataclass
class VQRAEOutput:
    reconstruction: torch.Tensor  # (B, 3, H, W), unclamped
    codes: torch.Tensor  # (B, h, w) long
    features: torch.Tensor  # (B, N, d) continuous encoder features (with grad when the encoder trains)
    quantizer_loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


class VQRAE(PreTrainedModel):
    config_class = VQRAEConfig
    base_model_prefix = "vqrae"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]  # noqa: RUF012 (transformers reads and extends this list)

    def __init__(self, config: VQRAEConfig):
        super().__init__(config)
        mean = config.image_mean or (0.5, 0.5, 0.5)
        std = config.image_std or (0.5, 0.5, 0.5)
        self.encoder = build_encoder(config.encoder_type, config.encoder_config, mean, std)
        d = self.encoder.feature_dim
        if config.image_size % self.encoder.patch_size:
            raise ValueError(f"image_size {config.image_size} is not a multiple of the encoder patch size "
                             f"{self.encoder.patch_size}")
        if config.quantizer == "patch-kmeans":
            self.quantizer = PatchKMeansVQ(
                dim=d,
                patch_size=self.encoder.patch_size,
                codebook_size=config.codebook_size,
                head_dim=config.quantizer_head_dim,
                ema_decay=config.ema_decay,
                dead_code_threshold=config.dead_code_threshold,
                lookup_memory_mb=config.lookup_memory_mb,
            )
        else:
            warn_small_codebook_dim(config.codebook_dim, d)
            self.quantizer = SimVQ(
                dim=d,
                codebook_size=config.codebook_size,
                codebook_dim=config.codebook_dim,
                commitment_weight=config.commitment_weight,
                l2_normalize=config.l2_normalize,
                lookup_memory_mb=config.lookup_memory_mb,
                codebook_seed=config.codebook_seed,
            )
        self.decoder = ViTDecoder(
            in_dim=d,
            dim=config.decoder_dim or d,
            depth=config.decoder_depth or self.encoder.depth,
            num_heads=config.decoder_heads or self.encoder.num_heads,
            patch_size=self.encoder.patch_size,
            mlp_ratio=config.decoder_mlp_ratio,
            gradient_checkpointing=config.decoder_gradient_checkpointing,
        )
        self.post_init()
        self.set_encoder_trainable(not config.freeze_encoder)

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Explicit initialisation of VQRAE's own modules, called by `post_init` (and by `from_pretrained` for
        weights missing from a checkpoint; loaded tensors are flagged and left alone).

        - SimVQ (projections, W, frozen codebook C): the SimVQ reference init, see `SimVQ.reset_parameters`;
          PatchKMeansVQ: nn.Linear's default for its head, an empty codebook (seeded by the first training batch).
        - ViT decoder: MAE's decoder init (xavier-uniform linears, zero biases, LayerNorm 1/0), see
          `ViTDecoder.reset_parameters`.
        - The encoder is never touched here: a Hugging Face encoder is a PreTrainedModel child that transformers
          initialises with its own `_init_weights` (and whose pretrained weights `from_encoder` loads afterwards); a
          timm encoder keeps timm's own init. Without this override transformers' generic N(0, 0.02) would land on
          W, the projections, the decoder and every timm layer.
        """
        if isinstance(module, (SimVQ, PatchKMeansVQ, ViTDecoder)):
            module.reset_parameters()

    # -- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def from_encoder(
        cls,
        encoder_type: str,
        name_or_path: str | None = None,
        *,
        encoder_config: dict | None = None,
        image_size: int | None = None,
        **config_kwargs,
    ) -> VQRAE:
        """A new tokenizer on a pretrained encoder (local folder or hub id) or on an inline encoder config.

        With `name_or_path`, the encoder weights are loaded from there; with only `encoder_config`, it is random
        (a from-scratch encoder, or tests). Everything else (codebook, decoder) starts fresh.
        """
        spec = resolve_encoder(encoder_type, name_or_path, encoder_config, image_size)
        config = VQRAEConfig(
            encoder_type=encoder_type,
            encoder_config=spec.config,
            encoder_name_or_path=name_or_path,
            image_size=spec.image_size,
            image_mean=list(spec.image_mean),
            image_std=list(spec.image_std),
            **config_kwargs,
        )
        model = cls(config)
        if name_or_path is not None and encoder_config is None:
            load_encoder_weights(model.encoder, encoder_type, name_or_path)
        return model

    def set_encoder_trainable(self, trainable: bool) -> None:
        self.config.freeze_encoder = not trainable
        self.encoder.requires_grad_(trainable)

    # -- properties -------------------------------------------------------------------------------------------------

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.config.image_size // self.encoder.patch_size
        return side, side

    @property
    def num_tokens(self) -> int:
        h, w = self.grid_size
        return h * w

    # -- API ----------------------------------------------------------------------------------------------------------

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        size = self.config.image_size
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[-2:] != (size, size):
            raise ValueError(f"expected pixels of shape (B, 3, {size}, {size}) in [0, 1], got {tuple(pixels.shape)}")

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [0, 1] -> continuous features (B, N, d)."""
        self._check_pixels(pixels)
        if self.config.freeze_encoder:
            with torch.no_grad():
                return self.encoder(pixels)
        return self.encoder(pixels)

    @torch.no_grad()
    def tokenize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [0, 1] -> codes (B, h, w) long in [0, K)."""
        codes = self.quantizer.lookup(self.encode(pixels))
        return codes.view(codes.shape[0], *self.grid_size)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) or (B, h*w) -> images (B, 3, H, W) in [0, 1]."""
        if codes.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        codes = codes.reshape(codes.shape[0], -1)
        if codes.shape[1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} codes per image ({self.grid_size}), got {codes.shape[1]}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.config.codebook_size})")
        return self.decoder(self.quantizer.code_vectors(codes), self.grid_size,
                            base=self.code_patches(codes)).clamp(0, 1)

    def decode_features(self, features: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Continuous encoder features (B, N, d) -> images in [0, 1]; snapped to their codes unless quantize=False."""
        if not quantize:
            return self.decoder(features, self.grid_size, base=self.feature_patches(features)).clamp(0, 1)
        q = self.quantizer(features)
        return self.decoder(q.quantized, self.grid_size, base=self.code_patches(q.codes)).clamp(0, 1)

    def code_patches(self, codes: torch.Tensor) -> torch.Tensor | None:
        """patch-kmeans: each code's patch (B, N, 3 p^2) in [-1, 1], which the decoder draws its correction on;
        None for SimVQ (its decoder draws from nothing)."""
        if not isinstance(self.quantizer, PatchKMeansVQ):
            return None
        return self.quantizer.code_patches(codes.reshape(codes.shape[0], -1))

    def feature_patches(self, features: torch.Tensor) -> torch.Tensor | None:
        """patch-kmeans: the pixel head's patches for continuous features (the unquantized path); None for SimVQ."""
        if not isinstance(self.quantizer, PatchKMeansVQ):
            return None
        return self.quantizer.predict_patches(features)

    def code_features(self) -> torch.Tensor:
        """Every code as a vector in the encoder feature space: (K, d)."""
        return self.quantizer.code_features()

    def patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [0, 1] -> each token's patch (B, N, 3 p^2) in [-1, 1], in the decoder head's
        (p q c) order: the target of the patch-kmeans quantizer's pixel head."""
        return to_patches(pixels, self.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> VQRAEOutput:
        features = self.encode(pixel_values)
        if isinstance(self.quantizer, PatchKMeansVQ):
            q = self.quantizer(features, self.patches(pixel_values))
        else:
            q = self.quantizer(features)
        recon = self.decoder(q.quantized, self.grid_size, base=self.code_patches(q.codes))
        return VQRAEOutput(
            reconstruction=recon,
            codes=q.codes.view(q.codes.shape[0], *self.grid_size),
            features=features,
            quantizer_loss=q.loss,
            codebook_loss=q.codebook_loss,
            commitment_loss=q.commitment_loss,
        )


def load_vqrae(name_or_path: str, device: str | torch.device = "cpu", **kwargs) -> VQRAE:
    """`VQRAE.from_pretrained` (a local folder or a hub id) with one-line errors for the usual mistakes (wrong or
    incomplete folder, unknown hub id); `kwargs` go to from_pretrained (e.g. dtype)."""
    from .hub import check_model_source

    source = check_model_source(name_or_path, VQRAEConfig.model_type, "VQRAE tokenizer")
    model = VQRAE.from_pretrained(source, **kwargs)
    return model.to(device).eval()


AutoConfig.register(VQRAEConfig.model_type, VQRAEConfig, exist_ok=True)
AutoModel.register(VQRAEConfig, VQRAE, exist_ok=True)
