"""Batches for the unified model's training stages, from conversation (VQA) records and caption (T2I) records.

Records (dicts), any mix in one batch:
- conversation: `{"messages": [{"role": "user"|"assistant"|"system", "content": str}], "images": [...]}` or the
  LLaVA form `{"conversations": [{"from": "human"|"gpt"|"system", "value": str}], "image": ...}`. One image per
  `<image>` in order; text-only conversations have none. Labels: the assistant replies (and their end token) only.
- caption: `{"caption": str, "image": ...}` or `{"caption": str, "codes": [h*w ints]}` (pre-tokenized). The
  sequence is the text-to-image prompt + `<boi>` + h*w codes + `<eoi>` + end of turn. Labels: the codes only.
  With `caption_dropout` p, the prompt is replaced by its unconditional form (what CFG sampling uses) with
  probability p.
- describe (alignment): `{"task": "describe", "caption": str, "image": ...}`: `<image>` + a describe prompt,
  answered with the caption (LLaVA-1.5's pretraining data). Labels: the caption.
- draw: `{"task": "draw", "caption": str, "image" or "codes": ..., "followup": [{"question", "answer"}, ...],
  "context": [LLaVA turns]}`: a chat turn asking for a drawing of the caption, answered with `<boi>` + codes +
  `<eoi>` (exactly what the model emits when it draws by itself in `vqrae chat`), then optional questions about that
  drawing answered in text; optionally after a conversation about the record's image (`context`, its `<image>` from
  `image` / `vqrae_features`). Labels: the codes and the answers.
A record's `task` ("conversation", "t2i", "describe", "draw") says which; without one, a record with a conversation is a
conversation (ShapesWorld items carry a caption as well) and a caption record is text-to-image.
An image is a path, a PIL image or a (3, H, W) tensor in [0, 1]; `file_name` (records) and `pixels` (the data
readers' items) are accepted for `image`. A single-image record may carry `vqrae_features` (N, feature_dim), the
VQRAE's features of its image computed once (data/feature_cache.py), in place of the image (or `image_codes`
(h*w,), its codes, for a model that reads images as codes: `UnifiedConfig.image_input`); `codes` likewise for
text-to-image and drawing records. Relative paths are opened as they are: resolve them against the record
file's folder before collating.

The batch: `input_ids`, `attention_mask`, `labels` (B, L), right-padded; `pixel_values` (M, 3, S, S) (or
`vqrae_features` (M, N, D) when the records carry them; one batch never mixes the two) for the `<image>` slots in
reading order; `gen_pixel_values` (G, 3, S, S) for caption records given as images, whose code
slots hold `GEN_SLOT` until `UnifiedModel.forward` tokenizes them. A bad record raises `InvalidRecord` (malformed
fields, an unknown role, an empty caption, a missing or unreadable image, wrong number of images, too long to
truncate without cutting an image): it is skipped, counted in `skipped` and logged, and the batch's `skipped` entry
says how many of its records were dropped (a count that survives DataLoader workers, whose collator copies' own
`skipped` the main process never sees). Any other exception is a bug and propagates.

Caption dropout (classifier-free guidance) is decided per record from (`seed`, the record's `sample_id`): the data
mixture numbers every sample it hands out, so the decision does not depend on the worker that collates it, does
not repeat across workers, and is the same after a resume. Records without a `sample_id` use the collator's own
random stream.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from vqrae.data.records import IMAGE_TOKEN, ROLE_ALIASES, InvalidRecord

from .modeling import GEN_SLOT
from .processing import UnifiedProcessor
from .vocab import BOI_TOKEN

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_IMAGE_TYPES = (str, os.PathLike, bytes, Image.Image, torch.Tensor)


def _validated(what: str, call: Callable, *args, errors: tuple[type[Exception], ...] = (ValueError,), **kwargs):
    """Run a processor call that checks the record; the `errors` it raises are about the record: InvalidRecord."""
    try:
        return call(*args, **kwargs)
    except InvalidRecord:
        raise
    except errors as exc:
        raise InvalidRecord(f"{what}: {exc}") from exc


def record_messages(record: dict) -> list[dict]:
    """The record's conversation as [{"role", "content"}] (accepts the LLaVA `conversations` form)."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
            raise InvalidRecord("'messages' must be a list of {'role': ..., 'content': ...} objects")
        return list(messages)
    conv = record.get("conversations")
    if not isinstance(conv, (list, tuple)) or not conv:
        raise InvalidRecord("a record needs 'caption', 'messages' or a non-empty 'conversations' list")
    turns = []
    for i, t in enumerate(conv):
        speaker = t.get("from") if isinstance(t, dict) else None
        role = ROLE_ALIASES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise InvalidRecord(f"turn {i}: unknown speaker {speaker!r} (a turn is {{'from': ..., 'value': ...}})")
        turns.append({"role": role, "content": t.get("value")})
    return turns


def record_image(record: dict):
    """The record's single image: `image`, `file_name` (data/records.py) or `pixels` (the data readers' items, a
    (3, H, W) tensor), or None."""
    for key in ("image", "file_name", "pixels"):
        if record.get(key) is not None:
            return record[key]
    return None


TASKS = ("conversation", "t2i", "describe", "draw")
# How a drawing request is phrased; picked per record (by its caption), so the model does not learn one sentence.
DRAW_REQUESTS = ("Draw {x}.", "Please draw {x}.", "Can you draw {x}?", "Make a picture of {x}.",
                 "Show me {x}.", "I would like an image of {x}.")


def record_task(record: dict) -> str:
    """What a record trains: its `task`, else a conversation when it has one (ShapesWorld items carry a caption
    too), else text-to-image for a caption. `describe` (alignment, LLaVA-1.5 pretraining) answers
    `<image>` + the describe prompt with the caption."""
    task = record.get("task")
    if task is not None:
        if task not in TASKS:
            raise InvalidRecord(f"task must be one of {TASKS}, got {task!r}")
        return task
    if "messages" in record or "conversations" in record:
        return "conversation"
    if "caption" in record:
        return "t2i"
    raise InvalidRecord("a record needs 'caption', 'messages' or a non-empty 'conversations' list")


def draw_request(caption: str) -> str:
    """The user turn asking for a drawing of `caption` ("a photo of a red circle" -> "Draw a red circle.")."""
    x = caption.strip().removeprefix("a photo of ").rstrip(".")
    pick = int(hashlib.sha1(caption.encode()).hexdigest()[:8], 16) % len(DRAW_REQUESTS)
    return DRAW_REQUESTS[pick].format(x=x)


def record_images(record: dict) -> list:
    if "images" in record:
        images = record["images"]
        if images is not None and not isinstance(images, (list, tuple)):
            raise InvalidRecord(f"'images' must be a list, got {type(images).__name__}")
        return list(images or [])
    return [] if record_image(record) is None else [record_image(record)]


@dataclass
class UnifiedCollator:
    processor: UnifiedProcessor
    caption_dropout: float = 0.0
    max_length: int | None = None
    seed: int = 0
    describe_prompt: str = "Describe the image briefly."  # the user turn of a `describe` (alignment) record
    skipped: int = field(default=0, init=False)

    def __post_init__(self):
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")
        self._rng = random.Random(self.seed)

    def drops_caption(self, record: dict) -> bool:
        """Whether this text-to-image record trains the unconditional prompt (see the module docstring)."""
        if self.caption_dropout <= 0:
            return False
        sample_id = record.get("sample_id")
        if sample_id is None:
            return self._rng.random() < self.caption_dropout
        digest = hashlib.sha1(f"{self.seed}:{sample_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.caption_dropout

    def encode_record(self, record: dict) -> tuple[list[int], list[int], list[torch.Tensor], list[torch.Tensor]]:
        """-> (ids, labels, images (or feature tensors) for <image> slots, images to tokenize for code slots);
        InvalidRecord if bad."""
        proc = self.processor
        if not isinstance(record, dict):
            raise InvalidRecord(f"a record must be a dict, got {type(record).__name__}")
        task = record_task(record)
        if task == "describe":
            caption = record.get("caption")
            if not isinstance(caption, str) or not caption.strip():
                raise InvalidRecord("a describe record needs a non-empty 'caption'")
            if all(record.get(k) is None for k in ("image", "file_name", "pixels", "vqrae_features", "image_codes")):
                raise InvalidRecord("a describe record needs an 'image'")
            record = {"messages": [{"role": "user", "content": f"{IMAGE_TOKEN}\n{self.describe_prompt}"},
                                   {"role": "assistant", "content": caption}],
                      "images": [record_image(record)], "vqrae_features": record.get("vqrae_features"),
                      "image_codes": record.get("image_codes")}
            task = "conversation"
        if task in ("t2i", "draw"):
            return self._encode_drawing(record, task)
        messages = record_messages(record)
        if record.get("image_codes") is not None:  # a codes-reading model (config.image_input == "codes")
            if proc.count_images(messages) != 1:
                raise InvalidRecord("image_codes stand for one image, but the conversation has "
                                    f"{proc.count_images(messages)} <image> placeholder(s)")
            ids, target = _validated("conversation", proc.encode_conversation, messages)
            labels = [t if is_t else IGNORE_INDEX for t, is_t in zip(ids, target)]
            return ids, labels, [self._codes(record["image_codes"])], []
        features = record.get("vqrae_features")
        images = [features] if features is not None else record_images(record)
        if proc.count_images(messages) != len(images):
            raise InvalidRecord(f"{proc.count_images(messages)} <image> placeholder(s) but {len(images)} image(s)")
        ids, target = _validated("conversation", proc.encode_conversation, messages)
        labels = [t if is_t else IGNORE_INDEX for t, is_t in zip(ids, target)]
        if features is not None:
            return ids, labels, [self._features(features)], []
        return ids, labels, [self._image(im) for im in images], []

    def _encode_drawing(self, record: dict, task: str):
        """A text-to-image record (prompt, `<boi>`, codes, `<eoi>`) or a drawing conversation."""
        proc, cfg = self.processor, self.processor.config
        n = cfg.num_image_tokens
        caption = record.get("caption")
        if not isinstance(caption, str):
            raise InvalidRecord(f"caption must be a string, got {type(caption).__name__}")
        gen: list[torch.Tensor] = []
        if record.get("codes") is not None:
            codes = self._codes(record["codes"])
            drawing, slots = codes, (codes + cfg.code_offset).tolist()
        elif record_image(record) is not None:
            gen = [self._image(record_image(record))]
            drawing, slots = None, [GEN_SLOT] * n
        else:
            raise InvalidRecord(f"a {task} record needs an 'image' or 'codes'")
        if task == "t2i":
            prompt = _validated("caption", proc.t2i_prompt_ids, caption, uncond=self.drops_caption(record))
            suffix = proc.t2i_suffix_ids()
            ids = prompt + slots + suffix
            labels = [IGNORE_INDEX] * len(prompt) + slots + [IGNORE_INDEX] * len(suffix)
            return ids, labels, [], gen
        if not caption.strip():
            raise InvalidRecord("a draw record needs a non-empty 'caption'")
        # An optional conversation about the record's own image before the request: in a chat, drawing requests
        # come after questions about an image too, and the model must still answer them with <boi>.
        context, images = [], []
        if record.get("context"):
            context = record_messages({"conversations": record["context"]})
            if proc.count_images(context) != 1:
                raise InvalidRecord(f"a draw record's context must show its image once, it has "
                                    f"{proc.count_images(context)} <image>")
            feats = record.get("vqrae_features")
            if feats is not None:
                images = [self._features(feats)]
            elif record_image(record) is not None:
                images = [self._image(record_image(record))]
            else:
                raise InvalidRecord("a draw record's context needs its image (or vqrae_features)")
        messages = [*context, {"role": "user", "content": draw_request(caption)},
                    {"role": "assistant", "content": BOI_TOKEN}]
        for qa in record.get("followup") or []:
            if not isinstance(qa, dict) or not all(isinstance(qa.get(k), str) for k in ("question", "answer")):
                raise InvalidRecord("followup entries must be {'question': str, 'answer': str}")
            messages += [{"role": "user", "content": qa["question"]}, {"role": "assistant", "content": qa["answer"]}]
        ids, target = _validated("draw", proc.encode_conversation, messages, drawings=[drawing])
        labels = [t if is_t else IGNORE_INDEX for t, is_t in zip(ids, target)]
        return ids, labels, images, gen

    def _codes(self, values: Any) -> torch.Tensor:
        cfg = self.processor.config
        n, k = cfg.num_image_tokens, cfg.codebook_size
        try:
            codes = torch.as_tensor(values, dtype=torch.long).flatten()
        except (TypeError, ValueError, RuntimeError) as exc:  # not a list of integers: the record's data
            raise InvalidRecord(f"codes must be {n} integers in [0, {k}): {exc}") from exc
        if codes.numel() != n or int(codes.min()) < 0 or int(codes.max()) >= k:
            raise InvalidRecord(f"codes must be {n} values in [0, {k})")
        return codes

    def _features(self, values: Any) -> torch.Tensor:
        cfg = self.processor.config
        feats = torch.as_tensor(values)
        # the VQRAE's own grid: merging (config.feature_merge) happens in the model
        if feats.dim() != 2 or feats.shape[0] != cfg.num_image_tokens or not feats.is_floating_point():
            raise InvalidRecord(f"vqrae_features must be a float ({cfg.num_image_tokens}, feature_dim) tensor, "
                                f"got shape {tuple(feats.shape)}")
        return feats

    def _image(self, image: Any) -> torch.Tensor:
        """A record's image at the model's input size; a missing or undecodable one is an InvalidRecord."""
        if not isinstance(image, _IMAGE_TYPES):
            raise InvalidRecord(f"an image must be a path, a PIL image or a (3, H, W) tensor, got "
                                f"{type(image).__name__}")
        return _validated("image", self.processor.image_tensor, image, errors=(ValueError, OSError))

    def _truncate(self, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        if self.max_length is None or len(ids) <= self.max_length:
            return ids, labels
        cfg = self.processor.config
        lo, hi = cfg.code_range
        # An image must stay whole: its feature slots, its code slots (GEN_SLOT or pre-tokenized code ids) and the
        # <boi> ... <eoi> around them. A record that cannot keep every image it holds is skipped, never cut.
        in_image = lambda t: t in (cfg.image_token_id, GEN_SLOT, cfg.boi_token_id, cfg.eoi_token_id) or lo <= t < hi
        if any(in_image(t) for t in ids[self.max_length:]):
            raise InvalidRecord(f"{len(ids)} tokens exceed max_length {self.max_length} inside an image")
        return ids[: self.max_length], labels[: self.max_length]

    def __call__(self, records: list[dict]) -> dict[str, torch.Tensor]:
        rows, images, gen_pixels = [], [], []
        errors = []
        for i, rec in enumerate(records):
            try:
                ids, labels, imgs, gen = self.encode_record(rec)
                ids, labels = self._truncate(ids, labels)
            except InvalidRecord as exc:  # bad input only: a bug (KeyError, TypeError, ...) propagates
                self.skipped += 1
                errors.append(f"record {i}: {exc}")
                logger.warning("skipping record %d: %s (%d skipped so far)", i, exc, self.skipped)
                continue
            rows.append((ids, labels))
            images.extend(imgs)
            gen_pixels.extend(gen)
        if not rows:
            raise ValueError("every record in the batch was bad: " + "; ".join(errors))
        pad = self.processor.config.pad_token_id
        length = max(len(ids) for ids, _ in rows)
        batch_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        batch_labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for r, (ids, labels) in enumerate(rows):
            batch_ids[r, : len(ids)] = torch.tensor(ids)
            batch_labels[r, : len(labels)] = torch.tensor(labels)
            mask[r, : len(ids)] = 1
        batch = {"input_ids": batch_ids, "attention_mask": mask, "labels": batch_labels,
                 "skipped": torch.tensor(len(records) - len(rows))}
        if images:
            # Pixels are (3, S, S), cached features (N, D), cached codes (h*w,): one batch holds one kind.
            if len({im.dim() for im in images}) > 1:
                raise ValueError("a batch mixes records with cached vqrae_features / image_codes and records with "
                                 "images: cache every understanding source or none")
            batch[{1: "image_codes", 2: "vqrae_features", 3: "pixel_values"}[images[0].dim()]] = torch.stack(images)
        if gen_pixels:
            batch["gen_pixel_values"] = torch.stack(gen_pixels)
        return batch
