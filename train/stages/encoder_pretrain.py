"""Stage 0, `encoder-pretrain`: a small SigLIP image-text model trained from scratch with the sigmoid loss.

For ShapesWorld (and any from-scratch encoder): Hugging Face's SigLIP classes built from a config, a SentencePiece
text tokenizer trained on the data's captions and questions, and the sigmoid contrastive loss of Zhai et al. The
export is an ordinary SigLIP checkpoint folder (config.json, model.safetensors, tokenizer, preprocessor_config.json)
that the tokenizer's SigLIP adapter loads by path, exactly as it would load google/siglip2-*.

One change to the loss: pairs whose captions are the same text count as positives. ShapesWorld repeats captions
("a photo of a red circle"), and calling two identical captions a mismatch would teach the model noise.

Dense objectives (`dense_shape_weight`, `dense_colour_weight`; 0 = the sigmoid loss alone): the sigmoid loss only
asks the pooled embedding to match the caption, so the patch features need not say which pixels of their patch
belong to which object, and a tokenizer built on them cannot draw shapes (issue 11: the reconstructions lost each
object's shape). SigLIP2 adds local objectives (captioning / referring decoders, self-distillation, masked
prediction) for exactly this; ShapesWorld has the exact masks, so here a linear head on each final patch feature
predicts the class of every pixel of its patch: its colour (background + the palette) over all pixels, and its
object's shape over the object pixels only, with a cross-entropy each. The head is dropped at export: the checkpoint
stays a plain SigLIP. Why the shape term skips the background: with background as a shape class (80% of the pixels),
the term fell to 0.21 by telling objects from background and stopped there; the object's shape read from the
feature at its centre stayed at chance (18%, `python -m vqrae.eval.shape_probe`). On object pixels alone, a
vision-only run reached 48% at step 300 (the colour term already separates object from background).
Records come with the items (`data: shapes`) or from the metadata.jsonl of a `vqrae data shapes` folder; images
without one are skipped by the dense loss.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..stage import Stage, sub_state_dict, unwrap
from .common import image_text_dataset

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EncoderPretrainConfig(TrainConfig):
    data: str = "shapes"  # "shapes" (rendered on the fly) or a caption data path (e.g. DIR/train of vqrae data shapes)
    data_num: int = 20000  # images when data == "shapes"
    val_data: str = "shapes"
    val_num: int = 512
    image_size: int = 64
    patch_size: int = 8
    width: int = 192  # vision and text towers share it: SigLIP compares their pooled outputs directly
    depth: int = 6
    heads: int = 3
    text_depth: int = 4
    max_text_len: int = 32
    vocab_size: int = 1000  # upper bound for the SentencePiece vocabulary
    tokenizer_corpus: int = 5000  # records whose captions and questions train the text tokenizer
    # dense per-pixel objectives on the patch features (see the module docstring); 0 turns one off
    dense_shape_weight: float = 0.0
    dense_colour_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("dense_shape_weight", "dense_colour_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"config key '{key}': must be >= 0, got {getattr(self, key)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"config key 'image_size': {self.image_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"config key 'width': {self.width} is not divisible by heads={self.heads}")


def caption_of(item: dict) -> str:
    """The most descriptive caption of an item (`fullest_caption`); an item without one is a KeyError."""
    from vqrae.data.shapes_text import fullest_caption

    return fullest_caption(item) or item["caption"]


def corpus_of(item: dict) -> list[str]:
    record = item.get("record") or item
    texts = list(record.get("captions") or [item.get("caption", "")])
    for turn in record.get("conversations") or []:
        texts.append(turn["value"].replace("<image>", "").strip())
    return texts


def dense_targets(record: dict | None, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel (shape, colour) class maps of a ShapesWorld record, (size, size) long each: 0 background, else 1 +
    the index in SHAPES / PALETTE. No record (or no objects): -1 everywhere, which the loss ignores."""
    from vqrae.data.shapes import PALETTE, SHAPES, rle_to_mask

    if not record or not record.get("objects"):
        return torch.full((size, size), -1, dtype=torch.long), torch.full((size, size), -1, dtype=torch.long)
    shape, colour = torch.zeros(size, size, dtype=torch.long), torch.zeros(size, size, dtype=torch.long)
    colours = list(PALETTE)
    for obj in record["objects"]:
        mask = torch.from_numpy(rle_to_mask(obj["mask"]))
        if mask.shape != (size, size):
            raise ValueError(f"record {record.get('id')}: mask {tuple(mask.shape)} does not match {size} px images")
        shape[mask] = 1 + SHAPES.index(obj["class"])
        colour[mask] = 1 + colours.index(obj["color"])
    return shape, colour


class SiglipPretrainer(nn.Module):
    """The SigLIP model plus the loss, so that the whole step is one forward (what DeepSpeed wraps). With dense
    weights, a linear head reads every pixel's shape and colour class from its patch's final feature."""

    def __init__(self, siglip: nn.Module, patch_size: int = 8, dense_shape_weight: float = 0.0,
                 dense_colour_weight: float = 0.0):
        super().__init__()
        from vqrae.data.shapes import PALETTE, SHAPES

        self.siglip = siglip
        self.patch_size = patch_size
        self.weights = (dense_shape_weight, dense_colour_weight)
        self.classes = (len(SHAPES) + 1, len(PALETTE) + 1)
        self.dense_head = None
        if any(self.weights):
            width = siglip.config.vision_config.hidden_size
            self.dense_head = nn.Linear(width, patch_size * patch_size * sum(self.classes))

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, positives: torch.Tensor,
                shape_labels: torch.Tensor | None = None, colour_labels: torch.Tensor | None = None):
        out = self.siglip(input_ids=input_ids, pixel_values=(pixels - 0.5) / 0.5)
        logits = out.logits_per_image  # (images, texts), scaled and biased
        signs = positives.to(logits.dtype) * 2 - 1
        loss = -F.logsigmoid(signs * logits).sum(dim=1).mean()
        dense = {}
        if self.dense_head is not None and shape_labels is not None:
            feats = out.vision_model_output.last_hidden_state  # (B, N, width): what the tokenizer quantizes
            b = feats.shape[0]
            side, p = pixels.shape[-1] // self.patch_size, self.patch_size
            # (B, N, p*p*C) -> per-pixel logits (B, C, H, W), pixel (i, j) of patch (y, x) at (y*p + i, x*p + j)
            pred = self.dense_head(feats).view(b, side, side, p, p, -1).permute(0, 5, 1, 3, 2, 4)
            pred = pred.reshape(b, -1, side * p, side * p)
            shape_logits, colour_logits = pred.split(self.classes, dim=1)
            if shape_labels is not None:  # the object's shape, on its own pixels (see the module docstring)
                shape_labels = shape_labels.masked_fill(shape_labels == 0, -1)
            for name, w, lg, lab in (("dense_shape", self.weights[0], shape_logits, shape_labels),
                                     ("dense_colour", self.weights[1], colour_logits, colour_labels)):
                if w > 0 and (lab >= 0).any():
                    term = F.cross_entropy(lg, lab, ignore_index=-1)
                    loss = loss + w * term
                    dense[name] = term.detach()
        return loss, logits, dense


class EncoderPretrainStage(Stage):
    name = "encoder-pretrain"
    config_class = EncoderPretrainConfig

    def __init__(self, config: EncoderPretrainConfig):
        super().__init__(config)
        self._train = image_text_dataset(config.data, config.data_num, config.image_size, "train", config.seed)
        self._val = image_text_dataset(config.val_data, config.val_num, config.image_size, "val", config.seed)
        self.text_tokenizer = None  # made in build_model: once the processes are up, by the main one only
        self._records = None  # image path -> ShapesWorld record, read on first use (dense objectives only)

    def _load_or_train_tokenizer(self):
        from transformers import AutoTokenizer

        from vqrae.data.text_tokenizer import train_text_tokenizer

        from .. import distributed

        folder = Path(self.config.output_dir) / "text_tokenizer"
        tok = None
        main = not distributed.is_initialized() or torch.distributed.get_rank() == 0
        if main and not (folder / "tokenizer.json").is_file():  # one process trains and writes it, the others wait
            n = min(self.config.tokenizer_corpus, len(self._train))
            texts = [t for i in range(n) for t in corpus_of(self._train[i])]
            tok = train_text_tokenizer(texts, folder, vocab_size=self.config.vocab_size)
        distributed.barrier()
        if tok is None:  # a resumed run keeps the vocabulary its weights were trained on
            tok = AutoTokenizer.from_pretrained(str(folder))
        tok.padding_side = "right"  # SigLIP pools the last position: pad after the text, to a fixed length
        return tok

    def build_model(self) -> nn.Module:
        from transformers import SiglipConfig, SiglipModel

        c = self.config
        self.text_tokenizer = self._load_or_train_tokenizer()
        vision = dict(hidden_size=c.width, intermediate_size=4 * c.width, num_hidden_layers=c.depth,
                      num_attention_heads=c.heads, image_size=c.image_size, patch_size=c.patch_size)
        text = dict(vocab_size=len(self.text_tokenizer), hidden_size=c.width, intermediate_size=4 * c.width,
                    num_hidden_layers=c.text_depth, num_attention_heads=c.heads,
                    max_position_embeddings=c.max_text_len, pad_token_id=self.text_tokenizer.pad_token_id,
                    eos_token_id=self.text_tokenizer.eos_token_id, bos_token_id=self.text_tokenizer.bos_token_id)
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        with torch.no_grad():  # the SigLIP paper's init: temperature 10, bias -10 (HF's zeros learn far slower)
            model.logit_scale.fill_(torch.log(torch.tensor(10.0)).item())
            model.logit_bias.fill_(-10.0)
        return SiglipPretrainer(model, c.patch_size, c.dense_shape_weight, c.dense_colour_weight)

    def train_dataset(self):
        return self._train

    def collate(self, samples: list[dict]) -> dict[str, Any]:
        captions = [caption_of(s) for s in samples]
        ids = self.text_tokenizer(captions, padding="max_length", truncation=True, max_length=self.config.max_text_len,
                                  return_tensors="pt").input_ids
        positives = torch.tensor([[a == b for b in captions] for a in captions])
        batch = {"pixels": torch.stack([s["pixels"] for s in samples]), "input_ids": ids, "positives": positives}
        if self.dense:
            size = batch["pixels"].shape[-1]
            maps = [dense_targets(self._record(s), size) for s in samples]
            batch["shape_labels"] = torch.stack([m[0] for m in maps])
            batch["colour_labels"] = torch.stack([m[1] for m in maps])
        return batch

    @property
    def dense(self) -> bool:
        return self.config.dense_shape_weight > 0 or self.config.dense_colour_weight > 0

    def _record(self, sample: dict) -> dict | None:
        """The item's ShapesWorld record: its own ("record", data: shapes) or its folder's metadata.jsonl."""
        if sample.get("record") is not None:
            return sample["record"]
        if self._records is None:
            from vqrae.eval.fidelity import RecordLookup

            self._records = RecordLookup()
        name = sample.get("name")
        return self._records(name) if isinstance(name, str) else None

    def loss(self, model: nn.Module, batch: dict, step: int):
        loss, logits, dense = model(batch["pixels"], batch["input_ids"], batch["positives"],
                                    batch.get("shape_labels"), batch.get("colour_labels"))
        acc = (logits.argmax(dim=1) == torch.arange(len(logits), device=logits.device)).float().mean()
        metrics = {"batch_i2t_acc": acc}
        if self.dense:  # the same keys every step (the engine averages them): 0 when a batch had no records
            metrics.update({k: dense.get(k, torch.zeros(())) for k in ("dense_shape", "dense_colour")})
        return loss, metrics

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        return zero_shot_retrieval(model, self._val, self.collate, self.to_device)

    def export(self, module: nn.Module, state_dict: dict[str, torch.Tensor], folder: Path) -> None:
        module.siglip.save_pretrained(folder, state_dict=sub_state_dict(state_dict, "siglip"))
        self.text_tokenizer.save_pretrained(str(folder))
        (folder / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "SiglipImageProcessor", "do_resize": True, "do_normalize": True,
            "do_rescale": True, "rescale_factor": 1 / 255, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "size": {"height": self.config.image_size, "width": self.config.image_size}}, indent=2))


def zero_shot_retrieval(model: nn.Module, dataset, collate, to_device, batch: int = 256) -> dict[str, float]:
    """Held-out image -> text retrieval: each image ranks the distinct captions of (up to) `batch` held-out images;
    top-1 is right when it picks the image's own caption text. Chance is 1 / distinct captions."""
    items = [dataset[i] for i in range(min(batch, len(dataset)))]
    captions = [caption_of(s) for s in items]
    distinct = sorted(set(captions))
    b = to_device(collate(items))
    texts = to_device(collate([{"pixels": items[0]["pixels"], "caption": c} for c in distinct]))
    siglip = unwrap(model).siglip
    image_emb = F.normalize(siglip.get_image_features(pixel_values=(b["pixels"] - 0.5) / 0.5).pooler_output, dim=-1)
    text_emb = F.normalize(siglip.get_text_features(input_ids=texts["input_ids"]).pooler_output, dim=-1)
    best = (image_emb @ text_emb.t()).argmax(dim=1).tolist()
    top1 = sum(distinct[j] == c for j, c in zip(best, captions)) / len(items)
    return {"retrieval_top1": top1, "retrieval_chance": 1 / len(distinct), "retrieval_candidates": len(distinct)}
