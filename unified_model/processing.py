"""UnifiedProcessor: the unified model's Hugging Face processor (a `ProcessorMixin`: text tokenizer + image processor).

    proc = UnifiedProcessor.from_pretrained(folder)          # or AutoProcessor.from_pretrained(folder) after `import vqrae`
    prompt = proc.apply_chat_template([{"role": "user", "content": "<image>\\nWhat is this?"}], add_generation_prompt=True)
    batch = proc(text=prompt, images=[img], return_tensors="pt")   # input_ids, attention_mask, pixel_values

One place tokenizes for training (the collator) and inference (chat, the sampler), so both see the same ids:
- a conversation is rendered by its template (`templates.resolve_template`: the LLM tokenizer's own chat template
  by default, a registry template otherwise) and the rendered text is tokenized *as a whole*, so BPE merges across
  the template's pieces are kept (": a" is [":", " a"], as `apply_chat_template(tokenize=True)` has it); which tokens
  are targets (the assistant's replies and their end marker) is read from the tokens' character offsets. One
  exception: no token may straddle the start of a reply, because an inference prompt ends exactly there (the
  generation prompt); where the whole-text tokenization would merge across it (a header ending in a space, like
  `plain`'s "ASSISTANT: "), the text is cut there, so a training conversation always begins with the very ids its
  inference prompt has. Every `<image>` becomes N copies of the image token id (the slots the projected features
  fill); every `<boi>` becomes `<boi>` + a drawing's h*w code ids + `<eoi>` (the `drawings` of `encode_conversation`);
- a text-to-image request is the template's user turn with the `t2i_prompt` (the caption inside it), then the
  assistant prefix and `<boi>`, tokenized as a whole as well; the unconditional variant (classifier-free guidance)
  replaces the caption as `uncond` says.

Text typed by a user (or sampled from the model) is not trusted: `escape` makes sure it never tokenizes to a special
id (`<image>`, `<boi>`, a template's `<|im_start|>`, ...); captions are always escaped.

The processor carries the settings it needs from the model's `UnifiedConfig` (`processor.config`: template, ids,
grid, codebook) as its own init kwargs, so a processor folder works without the model: `save_pretrained` writes
`processor_config.json` (those settings), the tokenizer files, `chat_template.jinja` and `preprocessor_config.json`.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .configuration import UnifiedConfig
from .image_processing import VQRAEImageProcessor, flatten_images, image_to_pixels
from .templates import (
    AUTO,
    AUTO_FALLBACK,
    has_chat_template,
    join_segments,
    resolve_template,
    tokens_in_spans,
)
from .vocab import BOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN, UNCOND_TOKEN

ImageInput = Image.Image | str | os.PathLike | bytes | np.ndarray | torch.Tensor

_CAPTION_MARK = "\x00caption\x00"  # splits the rendered t2i prompt around the caption; never in real text
# What `escape` inserts into a special token's text: invisible, so the text reads the same, and outside every
# special token, so the result tokenizes as plain text.
ESCAPE_MARK = "\u200b"  # ZERO WIDTH SPACE
# Marks, in input_ids and labels, the code slots of a drawing the forward pass tokenizes itself (a drawing given as
# None). The same value as `modeling.GEN_SLOT` (modeling imports this module, so it is declared here again rather
# than imported; a test checks the two are equal).
GEN_SLOT = -2
_PADDING = (False, True, "longest", "max_length", "do_not_pad")


@functools.lru_cache(maxsize=8)
def _special_pattern(specials: tuple[str, ...]) -> re.Pattern | None:
    """A regex matching any of `specials`, longest first (a tokenizer matches its added tokens that way)."""
    return re.compile("|".join(map(re.escape, sorted(set(specials), key=len, reverse=True)))) if specials else None


# The UnifiedConfig fields the processor needs, saved in processor_config.json (its init kwargs).
_SETTINGS = ("template", "num_image_features", "grid_size", "codebook_size", "code_offset", "image_token_id",
             "boi_token_id", "eoi_token_id", "uncond_token_id", "pad_token_id", "t2i_prompt", "uncond")


class UnifiedProcessor(ProcessorMixin):
    r"""
    Args:
        image_processor: a `VQRAEImageProcessor` (its `size` is the VQRAE's input resolution).
        tokenizer: the LLM's text tokenizer, with the image specials added (`vocab.extend_vocabulary`).
        chat_template: the jinja chat template `apply_chat_template` renders; default: the tokenizer's own when the
            conversation template is derived from it, else the conversation template as jinja (`to_jinja`).
        template: conversation template name (`"auto"`: the tokenizer's chat template, or `plain` without one).
        num_image_features: N, how many image-slot ids one `<image>` expands to.
        grid_size, codebook_size, code_offset: the code grid (h, w), K, and the LLM id of code 0.
        image_token_id, boi_token_id, eoi_token_id, uncond_token_id, pad_token_id: the special ids (-1: looked up
            in the tokenizer by the tokens' names).
        t2i_prompt: the user turn of a text-to-image request (`{caption}` is replaced by the caption).
        uncond: the CFG unconditional prompt: `"empty"`, `"pad"` or `"learned"`.

    `processor.config` holds those settings (a `UnifiedConfig` of its own; for a processor built by
    `from_model_config`, the model's `UnifiedConfig` itself, so the two never disagree); `settings()` is what `save_pretrained` writes.
    """

    image_token = IMAGE_TOKEN

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        template: str = AUTO,
        num_image_features: int = 0,
        grid_size: Sequence[int] = (0, 0),
        codebook_size: int = 0,
        code_offset: int = 0,
        image_token_id: int = -1,
        boi_token_id: int = -1,
        eoi_token_id: int = -1,
        uncond_token_id: int = -1,
        pad_token_id: int = -1,
        t2i_prompt: str = "Generate an image of: {caption}",
        uncond: str = "empty",
    ):
        if image_processor is None or tokenizer is None:
            raise ValueError("UnifiedProcessor needs an image_processor and a tokenizer")
        grid = [int(x) for x in grid_size]  # uncond, t2i_prompt and grid_size are checked by UnifiedConfig

        def lookup(given: int, token: str) -> int:
            if given is not None and given >= 0:
                return int(given)
            tid = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None
            return -1 if tid is None else int(tid)

        if template == AUTO and not has_chat_template(tokenizer):
            template = AUTO_FALLBACK  # what "auto" means without a chat template; saved as such
        # A settings-only UnifiedConfig (no model behind it): one definition of the fields and their properties.
        self.config = UnifiedConfig(
            template=template,
            num_image_features=int(num_image_features),
            grid_size=grid,
            codebook_size=int(codebook_size),
            code_offset=int(code_offset),
            image_token_id=lookup(image_token_id, IMAGE_TOKEN),
            boi_token_id=lookup(boi_token_id, BOI_TOKEN),
            eoi_token_id=lookup(eoi_token_id, EOI_TOKEN),
            uncond_token_id=lookup(uncond_token_id, UNCOND_TOKEN),
            pad_token_id=(int(pad_token_id) if pad_token_id is not None and pad_token_id >= 0
                          else (-1 if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id))),
            t2i_prompt=t2i_prompt,
            uncond=uncond,
        )
        self._template_name = template
        self.template = resolve_template(template, tokenizer)
        if chat_template is None:
            derived = template == AUTO
            chat_template = tokenizer.chat_template if derived else self.template.to_jinja()
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        eos = tokenizer.eos_token or ""
        self.eos = eos
        stop = self.template.stop_string(eos)
        stop_ids = self.tokenize(stop)
        if stop and len(stop_ids) != 1:
            raise ValueError(f"template {self.template.name!r}: its stop string {stop!r} is not a single token of the "
                             f"text tokenizer (extend the vocabulary first: unified_model.vocab.extend_vocabulary)")
        self.stop_token_ids = sorted(set(stop_ids) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None
                                                       else set()))

    # ----- building, saving -----
    @classmethod
    def from_model_config(cls, tokenizer, config: UnifiedConfig, image_size: int, **kwargs) -> UnifiedProcessor:
        """The processor of a unified model: its text tokenizer, its `UnifiedConfig` (ids filled in) and the VQRAE's
        input size. `kwargs` go to the constructor (e.g. `chat_template`)."""
        settings = {name: getattr(config, name) for name in _SETTINGS if getattr(config, name, None) is not None}
        proc = cls(VQRAEImageProcessor(size=int(image_size)), tokenizer, **settings, **kwargs)
        proc.config = config  # one source of truth inside a model: the model's config is the processor's
        return proc

    def settings(self) -> dict[str, Any]:
        """The settings the processor saves (its init kwargs): `config`'s values, the template by the name it
        resolved to ("auto" stays "auto" when derived from the tokenizer's chat template, else the registry name)."""
        out = {name: getattr(self.config, name) for name in _SETTINGS}
        out["grid_size"] = [int(x) for x in out["grid_size"]]
        out["template"] = self._template_name
        return out

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(self.settings())  # `template` as its name, not the object
        return out

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """processor_config.json (settings + image processor), tokenizer files, chat_template.jinja, and the image
        processor's own preprocessor_config.json (so `AutoImageProcessor` loads the folder too)."""
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        return [*files, *self.image_processor.save_pretrained(save_directory)]

    @property
    def image_size(self) -> int:
        return self.image_processor.size

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id

    # ----- text -----
    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def _tokens(self, text: str, start: int = 0) -> tuple[list[int], list[tuple[int, int]]]:
        """`text` (which begins at `start` of a longer text) -> ids and their character offsets in the longer text.

        Offsets are those of a fast tokenizer; some (GPT-2's `trim_offsets`) leave a token's leading or trailing
        spaces out of its span, so a span is a token's core, never more: the readers below only rely on that."""
        if not text:
            return [], []
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"UnifiedProcessor needs a fast (Rust `tokenizers`) text tokenizer for token offsets, "
                             f"got {type(self.tokenizer).__name__}")
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(start + s, start + e) for s, e in enc["offset_mapping"]]

    def _piece(self, text: str, start: int, end: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Tokens of `text[start:end]`, a text cut at `start` (0: not cut). A piece after a cut is tokenized after a
        newline that is then dropped (Hugging Face's `encode_marked_chat` does the same): a SentencePiece tokenizer
        would otherwise add the word-start mark it puts at the beginning of every text."""
        if start == 0:
            return self._tokens(text[:end])
        newline = self.tokenize("\n")
        ids, offsets = self._tokens("\n" + text[start:end], start - 1)
        if newline and ids[: len(newline)] == newline:
            return ids[len(newline):], offsets[len(newline):]
        return self._tokens(text[start:end], start)

    def _token_border(self, ids: list[int], offsets: list[tuple[int, int]], text: str, start: int,
                      cut: int) -> int | None:
        """The index of the first token after position `cut` when `cut` falls between two of the tokens `ids` of
        `text[start:]`; None when a token straddles it."""
        starts = [s for s, _ in offsets]
        i = bisect.bisect_left(starts, cut)
        if i < len(offsets) and starts[i] == cut and (i == 0 or offsets[i - 1][1] == cut):
            return i  # a token begins where its neighbour ends: there, whatever the offsets left out
        if any(s < cut < e for s, e in offsets):
            return None  # inside a token
        # Only trimmed spaces around `cut`: the text before it must tokenize to the first tokens on its own.
        head, _ = self._piece(text, start, cut)
        return len(head) if ids[: len(head)] == head else None

    def _tokenize_whole(self, text: str, cuts: Sequence[int] = ()
                        ) -> tuple[list[int], list[tuple[int, int]], dict[int, int]]:
        """`text` tokenized as a whole, except that no token straddles a position in `cuts` (the starts of the
        replies, where an inference prompt ends): where one would, the text is cut there and the part before it is
        tokenized on its own, as that inference prompt is. Also returns, for each cut, the index of the first token
        after it. Each pass tokenizes the text once; a second one only runs when a cut was needed."""
        cuts = sorted(set(cuts))
        applied: set[int] = set()
        while True:
            bounds = [0, *sorted(applied), len(text)]
            ids, offsets, borders, straddled = [], [], {}, set()
            for start, end in itertools.pairwise(bounds):
                part_ids, part_offsets = self._piece(text, start, end)
                for c in cuts:
                    if c == start or (c <= 0 and start == 0):
                        borders[c] = len(ids)
                    elif start < c < end:
                        at = self._token_border(part_ids, part_offsets, text, start, c)
                        if at is None:
                            straddled.add(c)
                        else:
                            borders[c] = len(ids) + at
                ids += part_ids
                offsets += part_offsets
            if not straddled:
                borders.update({c: len(ids) for c in cuts if c >= len(text)})
                return ids, offsets, borders
            applied |= straddled

    def _bos(self) -> list[int]:
        if self.template.add_bos:
            if self.tokenizer.bos_token_id is None:
                raise ValueError(f"template {self.template.name!r} wants a BOS token, the tokenizer has none")
            return [self.tokenizer.bos_token_id]
        return []

    def escape(self, text: str) -> str:
        """`text` as plain text: every special string of the tokenizer in it (`<image>`, `<boi>`, `<eoi>`,
        `<uncond>`, the template's `<|im_start|>`, EOS, ...: every added token) gets a zero-width space
        (`ESCAPE_MARK`) after its first character, so it tokenizes as the characters it is written with and never
        as the special id. The text prints the same and the model reads it nearly so. Use it on anything a user
        typed or a model sampled before it joins a conversation (`ChatSession` does); leave alone the placeholders
        the program itself puts in (an `<image>` per attached image, a `<boi>` per drawing). Added tokens of one
        character cannot be broken this way and are left as they are."""
        pattern = self._escape_pattern()
        if pattern is None:
            return text
        for _ in range(len(text) + 1):  # an escape cannot create a new match; the loop only handles overlaps
            escaped = pattern.sub(lambda m: m.group(0)[0] + ESCAPE_MARK + m.group(0)[1:], text)
            if escaped == text:
                return text
            text = escaped
        return text

    def _escape_pattern(self) -> re.Pattern | None:
        return _special_pattern(tuple(t for t in self.tokenizer.added_tokens_encoder if len(t) > 1 and not t.isspace()))

    def _expand(self, ids: list[int], target: bool, out_ids: list[int], out_target: list[bool]) -> None:
        """Append `ids` to `out_ids`, each image token as N image-slot ids (never a target)."""
        n, image_id = self.config.num_image_features, self.config.image_token_id
        for tok in ids:
            if tok == image_id:
                out_ids.extend([image_id] * n)
                out_target.extend([False] * n)
            else:
                out_ids.append(tok)
                out_target.append(target)

    def _drawing_ids(self, drawing: Any, index: int) -> list[int]:
        """A drawing (h*w codes in [0, K), any shape; None: the forward pass tokenizes it) -> its code ids."""
        n, k = self.config.num_image_tokens, self.config.codebook_size
        if drawing is None:
            return [GEN_SLOT] * n
        try:
            codes = torch.as_tensor(drawing).flatten()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"drawing {index}: codes must be {n} integers in [0, {k}): {exc}") from None
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"drawing {index}: codes must be integers, got {codes.dtype}")
        if codes.numel() != n or (n and (int(codes.min()) < 0 or int(codes.max()) >= k)):
            raise ValueError(f"drawing {index}: codes must be {n} values in [0, {k}), got {codes.numel()} values"
                             + (f" in [{int(codes.min())}, {int(codes.max())}]" if codes.numel() else ""))
        return (codes.long() + self.config.code_offset).tolist()

    def encode_conversation(
        self, messages: Sequence[dict], add_generation_prompt: bool = False, drawings: Sequence[Any] = (),
    ) -> tuple[list[int], list[bool]]:
        """Messages -> (ids, is_target): the rendered conversation tokenized as a whole (see the module docstring),
        the assistant's replies and their end marker as targets.

        Each `<image>` becomes N image-slot ids (never a target). Each `<boi>` in a message's content is a drawing:
        the i-th `<boi>` of the conversation becomes `<boi>` + the code ids of `drawings[i]` (h*w codes in [0, K),
        a list or tensor of any shape; None: `GEN_SLOT`s, to be filled by the forward pass from an image) +
        `<eoi>`, all of them targets in an assistant turn (the model learns to draw) and context in a user turn.
        A message writes a drawing as `<boi>` alone: the codes and `<eoi>` come from `drawings`.
        """
        segments = self.template.segments(list(messages), add_generation_prompt, self.eos)
        text, spans = join_segments(segments)
        ids, offsets, borders = self._tokenize_whole(text, cuts=[a for a, _ in spans])
        # A reply's tokens: from the token border at its start (exact, whatever the offsets) to the first token
        # that begins at or after its end (the end marker, a special token, ends it exactly in every template).
        target = [False] * len(ids)
        for a, b in spans:
            i = borders[a]
            while i < len(ids) and offsets[i][0] < b:
                target[i] = True
                i += 1
        bos = self._bos()
        return self._expand_all(bos + ids, [False] * len(bos) + target, list(drawings))

    def _expand_all(self, ids: list[int], target: list[bool], drawings: list) -> tuple[list[int], list[bool]]:
        """Each `<image>` -> N image slots (context), each `<boi>` -> `<boi>` + a drawing's codes + `<eoi>`."""
        cfg = self.config  # read once: a config attribute costs a lookup chain in transformers
        boi, eoi, image_id, n = cfg.boi_token_id, cfg.eoi_token_id, cfg.image_token_id, cfg.num_image_features
        n_boi = ids.count(boi) if boi >= 0 else 0
        if n_boi != len(drawings):
            raise ValueError(f"the conversation has {n_boi} {BOI_TOKEN} (drawing) marker(s) but {len(drawings)} "
                             f"drawing(s) were given")
        if eoi >= 0 and eoi in ids:
            raise ValueError(f"a message contains {EOI_TOKEN}: a drawing is written as {BOI_TOKEN} alone, its codes "
                             f"and {EOI_TOKEN} come from `drawings`")
        if n_boi == 0 and image_id not in ids:
            return ids, target
        out_ids: list[int] = []
        out_target: list[bool] = []
        k = 0  # drawings so far
        for tok, is_target in zip(ids, target):
            if tok == image_id:
                piece, is_target = [image_id] * n, False
            elif tok == boi:
                piece = [boi, *self._drawing_ids(drawings[k], k), eoi]
                k += 1
            else:
                out_ids.append(tok)
                out_target.append(is_target)
                continue
            out_ids.extend(piece)
            out_target.extend([is_target] * len(piece))
        return out_ids, out_target

    @staticmethod
    def count_images(messages: Sequence[dict]) -> int:
        return sum(str(m.get("content", "")).count(IMAGE_TOKEN) for m in messages)

    @staticmethod
    def count_drawings(messages: Sequence[dict]) -> int:
        """How many `<boi>` (drawings) the messages hold: the number of `drawings` `encode_conversation` wants."""
        return sum(str(m.get("content", "")).count(BOI_TOKEN) for m in messages)

    def t2i_prompt_ids(self, caption: str, uncond: bool = False) -> list[int]:
        """The prompt of a text-to-image request, ending with `<boi>`; `uncond=True` gives its CFG counterpart.

        The prompt is the template's user turn with `t2i_prompt` (the caption escaped: a caption is plain text)
        and the generation prompt, tokenized as a whole, so the caption's first word merges with what precedes it
        exactly as in any other text. Unconditional modes: `"empty"` renders the prompt with an empty caption;
        `"learned"` with the single `<uncond>` token as the caption; `"pad"` replaces each token that holds caption
        text by the pad id, so the unconditional prompt is as long as the conditional one and the image starts at
        the same position."""
        if not uncond and not caption.strip():
            raise ValueError("empty prompt: a text-to-image prompt needs some text")
        mode = self.config.uncond if uncond else None
        if mode == "learned" and self.config.uncond_token_id < 0:
            raise ValueError(f"uncond='learned' needs the {UNCOND_TOKEN} token in the text tokenizer")
        inside = {"empty": "", "learned": UNCOND_TOKEN}.get(mode, self.escape(caption))
        user = self.config.t2i_prompt.replace("{caption}", _CAPTION_MARK)
        pieces = self.template.render([{"role": "user", "content": user}], add_generation_prompt=True,
                                      eos=self.eos).split(_CAPTION_MARK)
        text, spans = pieces[0], []
        for piece in pieces[1:]:
            spans.append((len(text), len(text) + len(inside)))
            text += inside + piece
        ids, offsets = self._tokens(text)
        if mode == "pad":
            pad = self.config.pad_token_id
            ids = [pad if in_caption else t for t, in_caption in zip(ids, tokens_in_spans(offsets, spans))]
        elif mode == "learned" and ids.count(self.config.uncond_token_id) != len(spans):
            raise ValueError(f"{UNCOND_TOKEN} does not tokenize to uncond_token_id={self.config.uncond_token_id}")
        return self._bos() + ids + [self.config.boi_token_id]

    def t2i_suffix_ids(self) -> list[int]:
        """What follows the codes in a training record: `<eoi>`, then the end of the assistant turn."""
        t = self.template
        return [self.config.eoi_token_id] + self.tokenize(t.assistant_suffix.replace("{eos}", self.eos)
                                                          + t.turn_separator.replace("{eos}", self.eos))

    # ----- images -----
    def image_tensor(self, image: ImageInput) -> torch.Tensor:
        """A path, encoded bytes, PIL image, numpy array or (3, H, W) tensor in [0, 1] -> (3, S, S) in [0, 1] at the
        tokenizer's input size (the image processor's transform)."""
        return image_to_pixels(image, self.image_size)

    def pixel_values(self, images: Sequence[ImageInput]) -> torch.Tensor | None:
        if images is None or len(images) == 0:
            return None
        return torch.stack([self.image_tensor(im) for im in images])

    # ----- the Hugging Face processor call -----
    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        videos=None,
        audio=None,
        return_tensors: str | None = "pt",
        padding: bool | str = False,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        add_special_tokens: bool = True,
        return_attention_mask: bool = True,
        truncation: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Texts (already rendered prompts, e.g. by `apply_chat_template`) and their images -> a BatchFeature with
        `input_ids`, `attention_mask` and `pixel_values` (M, 3, S, S), the images in reading order.

        Each `<image>` in a text becomes N image-slot ids, exactly as `encode_conversation` expands it; there must be
        one image per `<image>` (images: a flat list over the batch, or one list per text). `add_special_tokens`
        prepends BOS when the template wants one. `padding` (`True`/"longest", "max_length" with `max_length`) pads
        with the pad id on the tokenizer's `padding_side`; nothing is truncated (that could cut an image).
        """
        if videos is not None or audio is not None:
            raise ValueError("UnifiedProcessor takes text and images only")
        if truncation:
            raise ValueError("UnifiedProcessor does not truncate (it could cut an image's slots); shorten the text")
        unknown = set(kwargs) - {"return_token_type_ids", "verbose", "return_mm_token_type_ids"}
        if unknown:
            raise TypeError(f"UnifiedProcessor.__call__ got unexpected keyword argument(s) {sorted(unknown)}")
        if padding not in _PADDING:
            raise ValueError(f"padding must be one of {_PADDING}, got {padding!r}")
        flat_images = flatten_images(images)
        if text is None and not flat_images:
            raise ValueError("UnifiedProcessor needs text and/or images")
        data: dict[str, Any] = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("text must be a string or a list of strings")
            n_slots = sum(t.count(IMAGE_TOKEN) for t in texts)
            if n_slots != len(flat_images):
                raise ValueError(f"the text has {n_slots} {IMAGE_TOKEN} placeholder(s) but {len(flat_images)} "
                                 f"image(s) were given")
            if n_slots and self.config.image_token_id < 0:
                raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token (extend the vocabulary first)")
            rows = [self._encode_text(t, add_special_tokens) for t in texts]
            data.update(self._pad(rows, padding, max_length, pad_to_multiple_of, padding_side,
                                  return_attention_mask, return_tensors))
        if flat_images:
            data["pixel_values"] = self.pixel_values(flat_images)
            if return_tensors == "np":
                data["pixel_values"] = data["pixel_values"].numpy()
        return BatchFeature(data, tensor_type=return_tensors)

    def _encode_text(self, text: str, add_special_tokens: bool) -> list[int]:
        bos = self.tokenizer.bos_token
        ids = self._bos() if add_special_tokens and not (bos and text.startswith(bos)) else []
        self._expand(self.tokenize(text), False, ids, [])
        return ids

    def _pad(self, rows: list[list[int]], padding, max_length, pad_to_multiple_of, padding_side,
             return_attention_mask: bool, return_tensors) -> dict[str, list[list[int]]]:
        longest = max(len(r) for r in rows)
        if padding in (True, "longest"):
            target = longest
        elif padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            if longest > max_length:
                raise ValueError(f"a text is {longest} tokens long, more than max_length={max_length}")
            target = max_length
        else:
            target = None
            if return_tensors is not None and len({len(r) for r in rows}) > 1:
                raise ValueError("the texts tokenize to different lengths: pass padding=True to batch them")
        if target is not None and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        side = padding_side or getattr(self.tokenizer, "padding_side", "right")
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        pad_id = self.config.pad_token_id
        input_ids, masks = [], []
        for r in rows:
            n = 0 if target is None else target - len(r)
            if n and pad_id < 0:
                raise ValueError("padding needs a pad token: the tokenizer has none")
            fill, ones = [pad_id] * n, [1] * len(r)
            input_ids.append(fill + r if side == "left" else r + fill)
            masks.append([0] * n + ones if side == "left" else ones + [0] * n)
        out = {"input_ids": input_ids}
        if return_attention_mask:
            out["attention_mask"] = masks
        return out


# `AutoProcessor` finds the class from a model folder (config.json of model_type "vqrae_unified") and, by the
# `processor_class` name in processor_config.json, from a processor folder without config.json (names are looked up
# among registered classes).
AutoProcessor.register(UnifiedConfig, UnifiedProcessor, exist_ok=True)

__all__ = ["ImageInput", "UnifiedProcessor", "VQRAEImageProcessor"]
