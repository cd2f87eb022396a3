"""The unified model's stages: `unified-align`, `unified-sft`, `unified-gen` (one module, three recipes).

    vqrae train unified-align --config shapes-tiny/unified-align llm=runs/lm/final vqrae=runs/tok/final
    vqrae train unified-sft   --config shapes-tiny/unified-sft   init=runs/align/final
    vqrae train unified-gen   --config shapes-tiny/unified-gen   init=runs/align/final

- align (LLaVA-1.5 pretraining): VQRAE and LLM frozen, only the projector trains (lr 1e-3), on `describe` records:
  an image answered with its caption.
- sft: projector + LLM (or LoRA adapters + the image vocabulary rows: `lora.r > 0`) on a weighted mixture of VQA
  conversations, caption requests and drawing requests, so that one model both answers and draws; the loss covers
  the assistant's tokens, text and image codes (weighted apart: `text_weight`, `image_weight`).
- gen (the paper's generator): text-to-image only, loss on image tokens only, caption dropout 10% (to the
  unconditional prompt the sampler guides against), constant lr after warmup, AdamW eps 1e-15.

A stage starts from `init` (a unified model folder: the previous stage's final/) or builds a new unified model from
`llm` (any local Hugging Face causal LM folder or hub id: the `lm-pretrain` stage's export, Qwen3-0.6B, Vicuna) and
`vqrae` (a tokenizer folder). Under ZeRO-3, starting from `init` loads the model partitioned; building from `llm`
extends the vocabulary of a whole model first (fine for small LLMs; for large ones write the initial folder once
with `vqrae export init-unified` and start from it).

While the VQRAE is frozen (always, in these stages), its codes (for t2i / draw records) and continuous features (for
conversations and captions) are computed once and cached on disk under `cache_dir`, keyed by a hash of the
tokenizer's weights (data/feature_cache.py): a changed tokenizer invalidates the cache by itself.
The exported folder records how the model was trained (`training.json`: this stage appended to the history of the
model it started from).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from vqrae.data.mixture import Mixture, SourceSpec, open_source, padding_fraction
from vqrae.unified_model.lora import LoraSettings

from ..config import TrainConfig
from ..stage import Stage, param_groups, unwrap

logger = logging.getLogger(__name__)

ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")


@dataclasses.dataclass
class UnifiedStageConfig(TrainConfig):
    # where the model comes from: a unified model folder, or an LLM + a VQRAE to build one from
    init: str = ""
    llm: str = ""
    vqrae: str = ""
    template: str = "auto"  # a new model's conversation template ("auto": the LLM tokenizer's chat template)
    projector_type: str = "mlp2x_gelu"
    code_init: Literal["projector", "mean"] = "projector"
    # a new model's <image> position reads an s x s block of the feature grid (1: LLaVA; 2: a quarter the positions)
    feature_merge: int = 1
    # a new model's projector starts from the statistics of this many training images' features (centred, scaled
    # to the text embeddings: see unified_model.projector.calibrate_projector); 0: torch's plain Linear init
    calibrate_projector: int = 256
    # how the model reads images: features (the paper) or codes (the understanding-input ablation); null: a new
    # model reads features, a loaded one keeps its own
    image_input: Literal["features", "codes"] | None = None
    reinit_codes: bool = False  # re-derive the code embeddings from the (now trained) projector before training
    # what to train on: a list of sources {task, data, weight, num, split, image_root, followup, name}
    data: list[dict] = dataclasses.field(default_factory=list)
    samples: int = 0  # mixture length (0: max_steps * global batch, each sample seen once)
    val_num: int = 64  # held-out samples per ShapesWorld source (its val split) for the validation loss
    eval_vqa: int = 0  # held-out ShapesWorld images whose VQA questions are asked at each evaluation (0: none)
    group_by_source: bool = True  # batches from one source each: similar lengths, less padding
    max_length: int = 1024  # longer records are cut (never inside an image) or, when they cannot be, skipped
    caption_dropout: float = 0.1  # t2i records trained with the unconditional prompt (what CFG guides against)
    text_weight: float = 1.0  # loss weight of text targets (answers)
    image_weight: float = 1.0  # loss weight of image-code targets
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    cache: bool = True  # cache codes and features of the frozen VQRAE on disk
    cache_dir: str = ""  # default: a `cache` folder beside output_dir (shared by the stages of one pipeline)
    gradient_checkpointing: bool = False  # the LLM's (activations recomputed in backward: less memory, ~30% slower)
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    master_dtype: Literal["fp32", "auto"] = "fp32"  # fp32: AdamW on fp32 weights even when the LLM loads as bf16

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.init) == bool(self.llm):
            raise ValueError("config keys 'init' / 'llm': give exactly one: init=FOLDER (a unified model) or "
                             "llm=PATH with vqrae=PATH (build a new one)")
        if self.llm and not self.vqrae:
            raise ValueError("config key 'vqrae': building from llm=... needs vqrae=FOLDER (a trained tokenizer)")
        if not self.data:
            raise ValueError("config key 'data': list at least one source ({task: ..., data: ..., weight: ...})")
        self.sources = [SourceSpec.from_dict(d, f"config key 'data' entry {i}") for i, d in enumerate(self.data)]
        for key in ("text_weight", "image_weight", "caption_dropout"):
            if getattr(self, key) < 0:
                raise ValueError(f"config key '{key}': must be >= 0, got {getattr(self, key)}")
        if self.caption_dropout > 1:
            raise ValueError(f"config key 'caption_dropout': must be in [0, 1], got {self.caption_dropout}")
        if self.text_weight == 0 and self.image_weight == 0:
            raise ValueError("config keys 'text_weight' and 'image_weight' are both 0: nothing to learn")
        if self.calibrate_projector < 0:
            raise ValueError(f"config key 'calibrate_projector': must be >= 0 images, got {self.calibrate_projector}")
        if self.feature_merge < 1:
            raise ValueError(f"config key 'feature_merge': must be >= 1, got {self.feature_merge}")
        if self.max_length < 16:
            raise ValueError(f"config key 'max_length': must be >= 16, got {self.max_length}")


@dataclasses.dataclass
class UnifiedAlignConfig(UnifiedStageConfig):
    lr: float = 1e-3
    warmup_steps: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        drawing = [s.label for s in self.sources if s.task in ("t2i", "draw")]
        if drawing:  # only the projector trains, and drawing records never pass through it
            raise ValueError(f"config key 'data': alignment trains the projector on images the model reads "
                             f"(conversation / describe sources); {', '.join(drawing)} would teach it nothing")


@dataclasses.dataclass
class UnifiedSFTConfig(UnifiedStageConfig):
    lr: float = 2e-4


@dataclasses.dataclass
class UnifiedGenConfig(UnifiedStageConfig):
    lr: float = 4e-4
    caption_dropout: float = 0.1
    text_weight: float = 0.0  # image tokens only
    schedule: Literal["cosine", "constant"] = "constant"
    warmup_steps: int = 20
    adam_eps: float = 1e-15
    adam_betas: tuple[float, float] = (0.9, 0.95)


def _dataset_key(spec: SourceSpec, image_size: int, seed: int, split: str) -> str:
    """What names a source's images for the cache: its data (a file: with its size and mtime), split, count, size."""
    where = spec.data
    if spec.data != "shapes" and os.path.exists(spec.data):
        st = os.stat(spec.data)
        where = f"{os.path.abspath(spec.data)}@{st.st_size}:{int(st.st_mtime)}"
    return f"{where}|{split}|{spec.num}|{image_size}|seed{seed}|{spec.image_root or ''}"


def _pixels(item: dict) -> torch.Tensor:
    """A reader item's image for the cache. Readers hand out a neighbour in place of an unreadable image (and
    mark it `skipped`): the cache records that index as invalid instead of caching the neighbour's values."""
    from vqrae.data.images import UnreadableImage

    if item.get("skipped"):
        raise UnreadableImage(f"{item.get('name', 'image')} could not be read")
    if item.get("pixels") is None:
        raise UnreadableImage(f"{item.get('name', 'record')} has no image")
    return item["pixels"]


class UnifiedStage(Stage):
    """What the three unified stages share; subclasses say what trains (`train_projector`, `train_llm`)."""

    name = ""
    config_class = UnifiedStageConfig
    train_projector: ClassVar[bool] = True
    train_llm: ClassVar[bool] = True
    shuffle_data = False  # the mixture is random already and groups its samples into batches by source

    def __init__(self, config: UnifiedStageConfig):
        super().__init__(config)
        # Loading a unified folder under ZeRO-3 is partitioned from the start; building from an LLM edits weights
        # (vocabulary extension, code rows) and so runs on whole tensors, and so does re-deriving the code rows from
        # the projector of an `init` folder (reinit_codes).
        self.partitioned_init = bool(config.init) and not config.reinit_codes
        self.model: nn.Module | None = None
        self._train: Dataset | None = None
        self._val: list[tuple[str, Dataset]] | None = None
        self.skipped = 0

    # ------------------------------------------------------------------------------------------ the model
    def build_model(self) -> nn.Module:
        from vqrae.unified_model import UnifiedModel
        from vqrae.unified_model.lora import add_lora
        from vqrae.unified_model.modeling import default_attn_implementation

        c = self.config
        dtype = torch.float32 if c.master_dtype == "fp32" else "auto"
        impl = default_attn_implementation(self.device) if c.attn_implementation == "auto" else c.attn_implementation
        if c.init:
            model = UnifiedModel.from_pretrained(c.init, dtype=dtype, attn_implementation=impl)
        else:
            model = UnifiedModel.from_llm(c.llm, c.vqrae, dtype=dtype, template=c.template,
                                          projector_type=c.projector_type, code_init=c.code_init,
                                          feature_merge=c.feature_merge, image_input=c.image_input or "features")
            model.llm.config._attn_implementation = impl
            if c.calibrate_projector and model.config.image_input == "features":
                self._calibrate(model)
        if c.image_input == "codes" and model.config.feature_merge != 1:
            raise ValueError(f"config key 'image_input': {c.init} merges {model.config.feature_merge}x"
                             f"{model.config.feature_merge} feature blocks; reading codes needs one position per code")
        if c.image_input and c.image_input != model.config.image_input:
            logger.warning("the model read images as %s; from now on it reads them as %s", model.config.image_input,
                           c.image_input)
            model.config.image_input = c.image_input
        if c.reinit_codes:
            model.init_code_embeddings("projector")
        model.set_trainable(projector=self.train_projector, llm=self.train_llm and not c.lora.r, vqrae=False)
        if not self.train_llm and model.config.image_input == "codes":
            # A model that reads codes has no projector in its input path: alignment trains what maps an image
            # into the LLM for it, the embedding table (whose code rows are the images' tokens).
            model.llm.get_input_embeddings().weight.requires_grad_(True)
        if c.lora.r:
            add_lora(model, c.lora)
        if c.gradient_checkpointing:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.llm.config.use_cache = False
        model.vqrae.eval()  # frozen: no dropout, BatchNorm-free statistics stay as trained
        self.model = model
        self.code_range = model.config.code_range
        return model

    def _calibrate(self, model) -> None:
        """The new projector takes the feature statistics of the first source's first images that the model reads."""
        c = self.config
        readers = [s for s in c.sources if s.task in ("conversation", "describe")]
        if not readers:
            return
        from vqrae.data.images import UnreadableImage

        spec = dataclasses.replace(readers[0], num=min(c.calibrate_projector, readers[0].num or c.calibrate_projector))
        items = open_source(spec, image_size=model.processor.image_size, seed=c.seed)
        pixels = []
        for i in range(min(len(items), c.calibrate_projector)):
            try:
                pixels.append(_pixels(items[i]))
            except UnreadableImage:  # skipped here as the cache skips it
                continue
        if not pixels:
            return
        with torch.no_grad():
            feats = torch.cat([model.vqrae.encode(torch.stack(pixels[i:i + 64]).to(self.device))
                               for i in range(0, len(pixels), 64)])
        stats = model.calibrate_projector(feats)
        logger.info("projector calibrated on %d images of %s: mean cosine between outputs %.3f -> %.3f, radius %.3f",
                    len(pixels), spec.label, stats["mean_cosine_before"], stats["mean_cosine_after"], stats["radius"])

    def param_groups(self, module: nn.Module) -> list[dict[str, Any]]:
        c = self.config
        return (param_groups(module.projector, lr=c.lr, weight_decay=c.weight_decay, name="projector")
                + param_groups(module.llm, lr=c.lr, weight_decay=c.weight_decay, name="llm"))

    # ------------------------------------------------------------------------------------------- the data
    def _collator(self):
        from vqrae.unified_model import UnifiedCollator

        c = self.config
        return UnifiedCollator(self.model.processor, caption_dropout=c.caption_dropout, max_length=c.max_length,
                               seed=c.seed)

    def _source(self, spec: SourceSpec, split: str, num: int | None = None) -> Dataset:
        """One source (its `split`), its images replaced by cached codes or features when caching is on."""
        c = self.config
        spec = dataclasses.replace(spec, split=split, num=num if num is not None else spec.num)
        size = self.model.processor.image_size
        ds = open_source(spec, image_size=size, seed=c.seed)
        if not c.cache:
            return ds
        from vqrae.data.feature_cache import CachedDataset, EncodedCache

        if spec.task in ("t2i", "draw"):
            what, field = "codes", "codes"
        elif unwrap(self.model).config.image_input == "codes":
            what, field = "codes", "image_codes"
        else:
            what, field = "features", "vqrae_features"
        root = c.cache_dir or str(Path(c.output_dir).resolve().parent / "cache")
        cache = EncodedCache(root=root, vqrae=self._plain_vqrae(), what=what, device=self.device)
        t0 = time.perf_counter()
        values = cache.get(_dataset_key(spec, size, c.seed, split), ds, image_fn=_pixels)
        logger.info("%s (%s): %s ready in %.1fs", spec.label, split, what, time.perf_counter() - t0)
        cached = CachedDataset(ds, values, field=field)
        if spec.task == "draw" and spec.context:  # the context's <image> reads the same image's features
            feats = EncodedCache(root=root, vqrae=self._plain_vqrae(), what="features", device=self.device).get(
                _dataset_key(spec, size, c.seed, split), ds, image_fn=_pixels)
            cached = CachedDataset(cached, feats, field="vqrae_features")
        if values.num_invalid:  # unreadable images: skipped for good, and counted
            logger.warning("%s (%s): %d of %d images unreadable, skipped", spec.label, split, values.num_invalid,
                           len(values))
            self.skipped += values.num_invalid
            return Subset(cached, cached.valid_indices())
        return cached

    def _plain_vqrae(self):
        """The VQRAE with whole weights (under ZeRO-3 the model's own are partitioned): the model's, or a copy
        loaded from the `init` folder."""
        vq = unwrap(self.model).vqrae
        if not any(hasattr(p, "ds_id") for p in vq.parameters()):
            return vq
        if getattr(self, "_vqrae_copy", None) is None:
            if self.config.vqrae:  # built from llm + vqrae: the tokenizer's own folder
                from vqrae.tokenizer import load_vqrae

                self._vqrae_copy = load_vqrae(self.config.vqrae)
            else:  # the vqrae.* weights of the unified folder
                from safetensors import safe_open

                from vqrae.tokenizer import VQRAE

                copy = VQRAE(unwrap(self.model).config.vqrae_config)
                state = {}
                for file in sorted(Path(self.config.init).glob("*.safetensors")):
                    with safe_open(str(file), "pt") as f:
                        names = [k for k in f.keys() if k.startswith("vqrae.")]  # noqa: SIM118 (not iterable)
                        state.update({k[len("vqrae."):]: f.get_tensor(k) for k in names})
                copy.load_state_dict(state)
                self._vqrae_copy = copy.eval()
        return self._vqrae_copy

    def train_dataset(self) -> Dataset:
        if self._train is None:
            c = self.config
            world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
            global_batch = c.batch_size * c.grad_accum * world
            sources = [self._source(s, s.split) for s in c.sources]
            self._train = Mixture(sources, [s.weight for s in c.sources], length=c.samples or c.max_steps * global_batch,
                                  seed=c.seed, names=[s.label for s in c.sources],
                                  group=c.batch_size * world if c.group_by_source else 0)
            self._log_padding(self._train)
        return self._train

    def _log_padding(self, data: Mixture, n: int = 256) -> None:
        """Measured padding of the first `n` samples' batches, as laid out and as a shuffled order would be."""
        collate = self._collator()
        n = min(n, len(data)) // self.config.batch_size * self.config.batch_size
        if n == 0:
            return
        lengths = []
        for i in range(n):
            try:
                lengths.append(len(collate.encode_record(data[i])[0]))
            except ValueError:  # a bad record: the collator will skip it
                lengths.append(0)
        shuffled = [lengths[i] for i in torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()]
        b = self.config.batch_size
        logger.info("padding: %.1f%% of batch tokens as laid out, %.1f%% with random batches (first %d samples)",
                    100 * padding_fraction(lengths, b), 100 * padding_fraction(shuffled, b), n)

    def collate(self, samples: list[dict]) -> dict:
        if not hasattr(self, "_collate"):
            self._collate = self._collator()
        return self._collate(samples)

    # ------------------------------------------------------------------------------------------- the loss
    def target_count(self, batch: dict) -> float:
        from vqrae.unified_model.loss import weighted_count
        from vqrae.unified_model.modeling import GEN_SLOT

        labels = batch["labels"].masked_fill(batch["labels"] == GEN_SLOT, self.code_range[0])  # codes to come
        return weighted_count(labels, self.code_range, self.config.text_weight, self.config.image_weight)

    def loss(self, model: nn.Module, batch: dict, step: int):
        skipped = batch.pop("skipped", None)
        self.skipped += int(skipped) if skipped is not None else 0
        out = model(**batch, text_weight=self.config.text_weight, image_weight=self.config.image_weight)
        return out.loss, {"text_loss": out.text_loss, "image_loss": out.image_loss,
                          "skipped": float(skipped) if skipped is not None else 0.0}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Loss on held-out samples of every ShapesWorld source (its val split), per source and overall; with
        `eval_vqa`, ShapesWorld VQA accuracy per question type on that many held-out images."""
        c = self.config
        if self._val is None:
            self._val = [(s.label, self._source(s, "val", c.val_num)) for s in c.sources
                         if s.data == "shapes" and c.val_num > 0]
        results: dict[str, float] = {}
        collate, total, weight = self._collator(), 0.0, 0.0
        for label, ds in self._val:
            loss_sum = count = 0.0
            for start in range(0, len(ds) - c.batch_size + 1, c.batch_size):
                batch = collate([dict(ds[i], sample_id=-1 - i) for i in range(start, start + c.batch_size)])
                n = self.target_count(batch)
                batch.pop("skipped")
                out = model(**self.to_device(batch), text_weight=c.text_weight, image_weight=c.image_weight)
                loss_sum += float(out.loss) * n
                count += n
            if count:
                results[f"loss/{label}"] = loss_sum / count
                total, weight = total + loss_sum, weight + count
        if weight:
            results["loss"] = total / weight
        if c.eval_vqa:
            import math

            from vqrae.eval.shapes_quick import shapes_vqa_metrics

            vqa = shapes_vqa_metrics(unwrap(model), c.eval_vqa, split="val", seed=c.seed)
            results.update({f"vqa/{k}": v for k, v in vqa.items() if not math.isnan(v) and k != "questions"})
        results["skipped_records"] = float(self.skipped)
        return results

    # ------------------------------------------------------------------------------------------ the export
    def history_entry(self) -> dict:
        c = self.config
        return {"stage": self.name, "steps": c.max_steps, "tasks": sorted({s.task for s in c.sources}),
                "data": [{"task": s.task, "data": s.data, "weight": s.weight, "num": s.num} for s in c.sources],
                "lora_r": c.lora.r, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def export(self, module: nn.Module, state_dict: dict[str, torch.Tensor], folder: Path) -> None:
        """A plain unified model folder (full fine-tuning), or a LoRA checkpoint (`lora.r > 0`: base + adapter,
        merged by `vqrae export merge-lora`). The weights come from `state_dict` (ZeRO-3 placeholders otherwise)."""
        from vqrae.unified_model.lora import is_lora, save_lora

        module.training_history = [*module.training_history, self.history_entry()]
        if is_lora(module):
            save_lora(module, folder, state_dict=state_dict)
        else:
            module.save_pretrained(folder, state_dict=state_dict)


class UnifiedAlignStage(UnifiedStage):
    name = "unified-align"
    config_class = UnifiedAlignConfig
    train_projector, train_llm = True, False


class UnifiedSFTStage(UnifiedStage):
    name = "unified-sft"
    config_class = UnifiedSFTConfig
    train_projector, train_llm = True, True


class UnifiedGenStage(UnifiedStage):
    name = "unified-gen"
    config_class = UnifiedGenConfig
    train_projector, train_llm = False, True  # text-to-image never reads image features
