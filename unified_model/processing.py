"""Text side of the unified model: conversations and text-to-image prompts -> token ids (+ target masks).

One place tokenizes for training (the collator) and inference (chat, the sampler), so both see the same ids:
- a conversation is rendered by its template as segments, each segment tokenized on its own, and every `<image>`
  expanded to N copies of the image token id (the slots the projected features fill);
- a text-to-image request is the template's user turn with the `t2i_prompt`, then the assistant prefix and `<boi>`;
  the unconditional variant (classifier-free guidance) replaces the caption as `UnifiedConfig.uncond` says.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image

from vqrae.data.images import image_to_tensor, load_image

from .configuration import UnifiedConfig
from .templates import get_template
from .vocab import IMAGE_TOKEN, UNCOND_TOKEN

ImageInput = Image.Image | str | os.PathLike | torch.Tensor

_CAPTION_MARK = "\x00caption\x00"  # splits the rendered t2i prompt around the caption; never in real text


class UnifiedProcessor:
    def __init__(self, tokenizer, config: UnifiedConfig, image_size: int):
        self.tokenizer = tokenizer
        self.config = config
        self.template = get_template(config.template)
        self.image_size = image_size
        eos = tokenizer.eos_token or ""
        self.eos = eos
        self.stop_token_ids = sorted(
            {tokenizer.convert_tokens_to_ids(self.template.stop_string(eos))}
            | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        )

    # ----- text -----
    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    def _bos(self) -> list[int]:
        if self.template.add_bos:
            if self.tokenizer.bos_token_id is None:
                raise ValueError(f"template {self.template.name!r} wants a BOS token, the tokenizer has none")
            return [self.tokenizer.bos_token_id]
        return []

    def encode_conversation(
        self, messages: Sequence[dict], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[bool]]:
        """Messages -> (ids, is_target). Each `<image>` becomes N image-slot ids (never a target)."""
        ids, target = self._bos(), [False] * len(self._bos())
        n, image_id = self.config.num_image_features, self.config.image_token_id
        for text, is_target in self.template.segments(list(messages), add_generation_prompt, self.eos):
            for tok in self.tokenize(text):
                if tok == image_id:
                    ids.extend([image_id] * n)
                    target.extend([False] * n)
                else:
                    ids.append(tok)
                    target.append(is_target)
        return ids, target

    @staticmethod
    def count_images(messages: Sequence[dict]) -> int:
        return sum(str(m.get("content", "")).count(IMAGE_TOKEN) for m in messages)

    def t2i_prompt_ids(self, caption: str, uncond: bool = False) -> list[int]:
        """The prompt of a text-to-image request, ending with `<boi>`; `uncond=True` gives its CFG counterpart."""
        if not uncond and not caption.strip():
            raise ValueError("empty prompt: a text-to-image prompt needs some text")
        user = self.config.t2i_prompt.replace("{caption}", _CAPTION_MARK)
        rendered = self.template.render([{"role": "user", "content": user}], add_generation_prompt=True,
                                        eos=self.eos)
        head, tail = rendered.split(_CAPTION_MARK)
        caption_ids = self.tokenize(caption)
        if uncond:
            mode = self.config.uncond
            if mode == "empty":
                caption_ids = []
            elif mode == "learned":
                caption_ids = [self.tokenizer.convert_tokens_to_ids(UNCOND_TOKEN)]
            else:  # "pad": same length as the caption, so the image starts at the same position
                caption_ids = [self.config.pad_token_id] * len(caption_ids)
        return self._bos() + self.tokenize(head) + caption_ids + self.tokenize(tail) + [self.config.boi_token_id]

    def t2i_suffix_ids(self) -> list[int]:
        """What follows the codes in a training record: `<eoi>`, then the end of the assistant turn."""
        t = self.template
        return [self.config.eoi_token_id] + self.tokenize(t.assistant_suffix.replace("{eos}", self.eos)
                                                          + t.turn_separator.replace("{eos}", self.eos))

    # ----- images -----
    def image_tensor(self, image: ImageInput) -> torch.Tensor:
        """A path, PIL image or (3, H, W) tensor in [0, 1] -> (3, S, S) at the tokenizer's input size."""
        if isinstance(image, torch.Tensor):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"image tensor must be (3, H, W), got {tuple(image.shape)}")
            if tuple(image.shape[1:]) == (self.image_size, self.image_size):
                return image.float()
            image = torch.nn.functional.interpolate(image[None].float(), size=(self.image_size,) * 2,
                                                    mode="bicubic", antialias=True, align_corners=False)
            return image[0].clamp(0, 1)
        if not isinstance(image, Image.Image):
            image = load_image(image)
        return image_to_tensor(image, self.image_size, crop="center")

    def pixel_values(self, images: Sequence[ImageInput]) -> torch.Tensor | None:
        if not images:
            return None
        return torch.stack([self.image_tensor(im) for im in images])
