"""Tokenizer stages 1 and 2 (`tokenizer-stage1`, `tokenizer-stage2`).

Stage 1: the encoder is frozen; the projections, SimVQ's map W and the ViT decoder learn to reconstruct pixels
    (L2 + perceptual + quantizer loss, + a patch GAN from `gan_start_step` when `gan_weight` > 0).
Stage 2: the encoder trains too, at its own low learning rate, held near a frozen copy of the stage-1 encoder by
    self-distillation ||Z - T(x)||^2 (weight `distill_weight`), plus every stage-1 loss. The features stay good for
    understanding while reconstruction improves.

The whole step (encoder, quantizer, decoder, perceptual network, discriminator) is the forward of one module,
`TokenizerTrainer`, so the engine and DeepSpeed see one model with parameter groups for encoder, rest and
discriminator. The discriminator shares the optimiser step: see tokenizer.losses.gan_losses.

The tokenizer's own settings live in the `model:` section (`ModelSettings`, handed to VQRAEConfig when a fresh
tokenizer is built; `model.commitment_weight=0.5` on the command line). The older top-level keys (`codebook_size`,
`codebook_dim`, `l2_normalize`, `decoder_dim`, `decoder_depth`, `decoder_heads`) still work as other spellings of
their `model.` key (whichever is given later wins, so `codebook_size=64` overrides a file's `model.codebook_size`).
With `tokenizer=` (an existing VQRAE folder) the architecture comes from that folder, so setting an architecture key
as well is an error rather than a setting silently ignored; the settings of how it trains (`commitment_weight`,
`lookup_memory_mb`, `decoder_gradient_checkpointing`) apply to the loaded tokenizer.

The model (and everything random: the decoder's and discriminator's initial weights) is built in `build_model`,
which the engine calls after seeding, so `seed` fixes the initial weights and every process starts from the same
ones; the frozen codebook comes from its own generator (`model.codebook_seed`, by default the run's `seed`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqrae.eval.metrics import mean_psnr
from vqrae.tokenizer import VQRAE, VQRAEConfig
from vqrae.tokenizer.losses import PatchDiscriminator, PerceptualLoss, adaptive_gan_weight, gan_losses

from ..config import TrainConfig
from ..stage import Stage, param_groups, sub_state_dict, unwrap
from .common import image_text_dataset

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ModelSettings:
    """The `model:` section: VQRAEConfig settings for a fresh tokenizer. null (the default) keeps VQRAEConfig's
    default (in brackets); see VQRAEConfig for what each one means."""

    codebook_size: int | None = None  # K [16384]
    codebook_dim: int | None = None  # e [1536]; >= the encoder width, as the paper requires
    commitment_weight: float | None = None  # beta [0.25]
    l2_normalize: bool | None = None  # cosine code matching (LlamaGen-style) [false: the paper's L2]
    lookup_memory_mb: int | None = None  # memory budget of the nearest-code search [256]
    decoder_dim: int | None = None  # [null: mirror the encoder]
    decoder_depth: int | None = None  # [null: mirror the encoder]
    decoder_heads: int | None = None  # [null: mirror the encoder]
    decoder_mlp_ratio: float | None = None  # [4.0]
    decoder_gradient_checkpointing: bool | None = None  # recompute decoder blocks in the backward [false]
    codebook_seed: int | None = None  # seed of the frozen random codebook [null: the run's `seed`]
    quantizer: str | None = None  # simvq (the paper's) | patch-kmeans (codes placed by a pixel head) [simvq]
    quantizer_head_dim: int | None = None  # patch-kmeans: the pixel head's hidden width [512]
    ema_decay: float | None = None  # patch-kmeans: EMA decay of the codebook statistics [0.99]
    dead_code_threshold: float | None = None  # patch-kmeans: restart codes under this EMA count per step [0.25]


# Settings that also apply to a tokenizer loaded with `tokenizer=` (they change how it trains, not what it is).
RUNTIME_MODEL_KEYS = ("commitment_weight", "lookup_memory_mb", "decoder_gradient_checkpointing", "ema_decay",
                      "dead_code_threshold")
# The older top-level spellings of some `model` keys (alias fields of TokenizerStageConfig).
FLAT_MODEL_KEYS = ("codebook_size", "codebook_dim", "l2_normalize", "decoder_dim", "decoder_depth", "decoder_heads")


def _vqrae_default(key: str) -> Any:
    return inspect.signature(VQRAEConfig.__init__).parameters[key].default


@dataclasses.dataclass
class TokenizerStageConfig(TrainConfig):
    # where the tokenizer starts: a VQRAE folder (stage 2: the stage-1 result), or a fresh one on `encoder`
    tokenizer: str | None = None
    encoder: str | None = None  # local folder or hub id of the pretrained encoder (fresh tokenizer only)
    encoder_type: str = "siglip"  # siglip | dinov2 | timm (fresh tokenizer only)
    image_size: int | None = None  # None: the encoder's own (fresh tokenizer only)
    model: ModelSettings = dataclasses.field(default_factory=ModelSettings)  # the tokenizer's settings
    # Older spellings of model.KEY: a YAML key or override of that name sets model.KEY (later ones win), and the
    # field itself stays null.
    codebook_size: int | None = dataclasses.field(default=None, metadata={"alias": "model.codebook_size"})
    codebook_dim: int | None = dataclasses.field(default=None, metadata={"alias": "model.codebook_dim"})
    l2_normalize: bool | None = dataclasses.field(default=None, metadata={"alias": "model.l2_normalize"})
    decoder_dim: int | None = dataclasses.field(default=None, metadata={"alias": "model.decoder_dim"})
    decoder_depth: int | None = dataclasses.field(default=None, metadata={"alias": "model.decoder_depth"})
    decoder_heads: int | None = dataclasses.field(default=None, metadata={"alias": "model.decoder_heads"})
    # false: the continuous baseline (RAE): the decoder reads unquantized features, no codes and no quantizer loss.
    # Not a tokenizer (its codes stay untrained); it is the ceiling `vqrae ablate quantizer` measures codes against.
    quantize: bool = True
    # data
    data: str = "shapes"  # "shapes" (rendered on the fly) or an image data path (e.g. DIR/train of vqrae data shapes)
    data_num: int = 20000
    val_data: str = "shapes"
    val_num: int = 256
    random_crop: bool = False
    flip: bool = False
    # losses
    l2_weight: float = 1.0
    perceptual_weight: float = 1.1
    lpips_vgg_weights: str | None = None  # torchvision vgg16 weights on disk -> LPIPS; else the frozen encoder's features
    quantizer_weight: float = 1.0
    gan_weight: float = 0.0  # 0 disables the GAN
    gan_start_step: int = 0
    disc_lr: float = 4e-5
    disc_channels: int = 64
    # The periodic evaluation's reconstruction-fidelity figures (ShapesWorld detector on every val image, see
    # eval/fidelity.py): off by default, as they add ~10-20 s per evaluation on 2 CPU cores; `vqrae eval
    # reconstruction` and the quickstart always measure them on the finished tokenizer.
    eval_fidelity: bool = False
    # stage 2
    train_encoder: bool = False
    encoder_lr: float = 1e-5
    distill_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.model, dict):  # TokenizerStageConfig(model={...}) from Python
            self.model = ModelSettings(**self.model)
        if self.tokenizer is None and self.encoder is None:
            raise ValueError("config: give 'tokenizer' (a VQRAE folder) or 'encoder' (a pretrained encoder)")
        for key in ("l2_weight", "perceptual_weight", "quantizer_weight", "gan_weight", "distill_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"config key '{key}': must be >= 0, got {getattr(self, key)}")
        for key in FLAT_MODEL_KEYS:  # older spellings given from Python (load_config never fills them)
            flat, nested = getattr(self, key), getattr(self.model, key)
            if flat is None:
                continue
            if nested is not None and nested != flat:
                raise ValueError(f"config keys '{key}' ({flat}) and 'model.{key}' ({nested}) disagree: set one")
            setattr(self.model, key, flat)
            setattr(self, key, None)
        if self.tokenizer is not None:
            self._refuse_architecture_keys()

    def _refuse_architecture_keys(self) -> None:
        """With `tokenizer=`, the architecture is the folder's: a key that would change it is an error."""
        why = "has no effect with 'tokenizer' (the tokenizer folder fixes it): remove it"
        for key, value, default in (("encoder", self.encoder, None), ("encoder_type", self.encoder_type, "siglip"),
                                    ("image_size", self.image_size, None)):
            if value is not None and value != default:
                raise ValueError(f"config key '{key}' ({value}) {why}")
        for f in dataclasses.fields(ModelSettings):
            if f.name in RUNTIME_MODEL_KEYS:
                continue
            value = getattr(self.model, f.name)
            default = None if f.name == "codebook_seed" else _vqrae_default(f.name)
            if value is not None and value != default:
                name = f"model.{f.name}' (or '{f.name}'" if f.name in FLAT_MODEL_KEYS else f"model.{f.name}"
                raise ValueError(f"config key '{name}' ({value}) {why}")

    def vqrae_kwargs(self) -> dict[str, Any]:
        """The VQRAEConfig settings of a fresh tokenizer: every `model` key that is set, and the codebook seed."""
        kwargs = {k: v for k, v in dataclasses.asdict(self.model).items() if v is not None}
        kwargs.setdefault("codebook_seed", self.seed)
        return kwargs


class TokenizerTrainer(nn.Module):
    """VQRAE + everything its losses need; forward(pixels, step) -> (loss, metrics)."""

    def __init__(self, vq: VQRAE, config: TokenizerStageConfig):
        super().__init__()
        self.vq = vq
        self.config = config
        self.teacher = None
        if config.train_encoder:
            # T: a frozen copy of the encoder as it enters stage 2. It also serves as the perceptual network, since
            # the trained encoder is a moving target.
            self.teacher = copy.deepcopy(vq.encoder).requires_grad_(False).eval()
            vq.set_encoder_trainable(True)
        else:
            vq.set_encoder_trainable(False)
        if not config.quantize:
            vq.quantizer.requires_grad_(False)  # the continuous baseline never uses it
        self.perceptual = PerceptualLoss(config.lpips_vgg_weights, feature_net=self.teacher or vq.encoder)
        self.disc = PatchDiscriminator(config.disc_channels) if config.gan_weight > 0 else None

    def forward(self, pixels: torch.Tensor, step: int = 0):
        c = self.config
        if c.quantize:
            out = self.vq(pixels)
            recon, features, quantizer_loss = out.reconstruction, out.features, out.quantizer_loss
        else:
            features = self.vq.encode(pixels)
            recon = self.vq.decoder(features, self.vq.grid_size, base=self.vq.feature_patches(features))
            quantizer_loss = recon.new_zeros(())
        l2 = F.mse_loss(recon, pixels)
        perceptual = self.perceptual(recon, pixels) if c.perceptual_weight > 0 else recon.new_zeros(())
        loss = c.l2_weight * l2 + c.perceptual_weight * perceptual + c.quantizer_weight * quantizer_loss
        metrics = {"l2": l2.detach(), "perceptual": perceptual.detach(), "quantizer": quantizer_loss.detach(),
                   "psnr": mean_psnr(pixels, recon)}  # the evaluation's definition (uint8, per image, mean)
        if c.quantize:
            metrics["batch_utilization"] = out.codes.unique().numel() / self.vq.config.codebook_size
            if self.vq.config.quantizer == "patch-kmeans":
                metrics["pixel_head"] = out.codebook_loss.detach()  # the head's patch MSE in [-1, 1] space
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(pixels)
            distill = F.mse_loss(features, target)
            loss = loss + c.distill_weight * distill
            metrics["distill"] = distill.detach()
        if self.disc is not None:
            d_loss, g_loss = gan_losses(self.disc, pixels, recon)
            active = float(step >= c.gan_start_step)
            weight = recon.new_zeros(())
            if active and self.training and torch.is_grad_enabled():
                nll = c.l2_weight * l2 + c.perceptual_weight * perceptual
                weight = adaptive_gan_weight(nll, g_loss, self.vq.decoder.head.weight) * c.gan_weight
            loss = loss + active * (weight * g_loss + d_loss)
            metrics.update(d_loss=d_loss.detach(), g_loss=g_loss.detach(), gan_weight=weight)
        return loss, metrics


class TokenizerStage1(Stage):
    name = "tokenizer-stage1"
    config_class = TokenizerStageConfig
    train_encoder = False

    def __init__(self, config: TokenizerStageConfig):
        if config.train_encoder != self.train_encoder:
            config = dataclasses.replace(config, train_encoder=self.train_encoder)
        super().__init__(config)
        # Nothing is built here: the engine seeds, then calls build_model (see the module docstring).
        self._vq: VQRAE | None = None
        self._data: tuple | None = None

    def _load_tokenizer(self) -> VQRAE:
        c = self.config
        if c.tokenizer:
            from vqrae.tokenizer import load_vqrae

            vq = load_vqrae(c.tokenizer).train()
            for key in RUNTIME_MODEL_KEYS:  # what a loaded tokenizer may still be told (how it trains)
                value = getattr(c.model, key)
                if value is not None:
                    setattr(vq.config, key, value)
            if vq.config.quantizer == "simvq":
                vq.quantizer.commitment_weight = vq.config.commitment_weight
            vq.quantizer.lookup_memory_mb = vq.config.lookup_memory_mb
            if vq.config.quantizer == "patch-kmeans":
                vq.quantizer.ema_decay = vq.config.ema_decay
                vq.quantizer.dead_code_threshold = vq.config.dead_code_threshold
            vq.decoder.gradient_checkpointing = vq.config.decoder_gradient_checkpointing
            return vq
        return VQRAE.from_encoder(c.encoder_type, c.encoder, image_size=c.image_size, **c.vqrae_kwargs())

    def build_model(self) -> nn.Module:
        self._vq = self._load_tokenizer()
        return TokenizerTrainer(self._vq, self.config)

    def _image_size(self) -> int:
        if self._vq is not None:
            return self._vq.image_size
        c = self.config  # data asked for before the model was built: read the size from the configs
        if c.tokenizer:
            return VQRAEConfig.from_pretrained(c.tokenizer).image_size
        from vqrae.tokenizer.encoders import resolve_encoder

        return resolve_encoder(c.encoder_type, c.encoder, None, c.image_size).image_size

    def _datasets(self) -> tuple:
        if self._data is None:
            c, size = self.config, self._image_size()
            crop = "random" if c.random_crop else "center"
            train = image_text_dataset(c.data, c.data_num, size, "train", c.seed, kind="image", crop=crop,
                                       flip=c.flip)
            val = image_text_dataset(c.val_data, c.val_num, size, "val", c.seed, kind="image")
            self._data = (train, val)
        return self._data

    def param_groups(self, module: TokenizerTrainer):
        c = self.config
        skip = {"encoder"} if c.quantize else {"encoder", "quantizer"}  # an unused quantizer is not optimised
        rest = [m for name, m in module.vq.named_children() if name not in skip]
        groups = []
        for m in rest:
            groups += param_groups(m, lr=c.lr, weight_decay=c.weight_decay, name="tokenizer")
        if c.train_encoder:
            groups += param_groups(module.vq.encoder, lr=c.encoder_lr, weight_decay=c.weight_decay, name="encoder")
        if module.disc is not None:
            groups += param_groups(module.disc, lr=c.disc_lr, weight_decay=c.weight_decay, name="disc")
        return groups

    def train_dataset(self):
        return self._datasets()[0]

    def collate(self, samples: list[dict]) -> dict:
        from vqrae.data.readers import collate

        return collate(samples)  # stacked pixels, summed skip count

    def loss(self, model: nn.Module, batch: dict, step: int):
        loss, metrics = model(batch["pixels"], step)
        metrics["skipped_images"] = float(batch["skipped"])
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        from vqrae.eval.reconstruction import reconstruction_metrics

        module = unwrap(model)
        metrics = reconstruction_metrics(module.vq, self._datasets()[1], batch_size=self.config.batch_size,
                                         reference_encoder=module.teacher, to_device=self.to_device,
                                         progress=False, quantize=self.config.quantize,
                                         fidelity=self.config.eval_fidelity)
        # Numbers only (the notes are for the CLI), and not the image count: it is a constant, not a curve.
        return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "images"}

    def export(self, module: TokenizerTrainer, state_dict: dict[str, torch.Tensor], folder: Path) -> None:
        module.vq.config.freeze_encoder = True  # a finished tokenizer loads frozen; stage 2 unfreezes it itself
        if not self.config.quantize:
            logger.warning("quantize=false: the export is a continuous autoencoder; its codes are untrained "
                           "(decode with decode_features(features, quantize=False))")
        module.vq.save_pretrained(folder, state_dict=sub_state_dict(state_dict, "vq"))


class TokenizerStage2(TokenizerStage1):
    name = "tokenizer-stage2"
    train_encoder = True


__all__ = ["ModelSettings", "TokenizerStage1", "TokenizerStage2", "TokenizerStageConfig", "TokenizerTrainer"]
