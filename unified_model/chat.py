"""A multi-turn conversation with the unified model, where images go both ways.

`ChatSession` keeps the messages and their images. `attach(path)` queues an image for the next question; `draw`
generates an image with the sampler, saves it, and puts it into the conversation as the assistant's reply to a
text-to-image request, so the next question can be about it (its continuous features are spliced in like those of
any attached image). The `vqrae chat` command is a thin terminal loop over this class.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from vqrae.data.images import load_image

from .generation import generate_images
from .modeling import UnifiedModel
from .vocab import IMAGE_TOKEN

logger = logging.getLogger(__name__)


class ChatSession:
    def __init__(self, model: UnifiedModel, out_dir: str | Path = "runs/chat", answer: dict | None = None,
                 draw: dict | None = None, seed: int = 0):
        """`answer`: sampling settings for replies (max_new_tokens, temperature, top_k, top_p);
        `draw`: settings for `/draw` (cfg_scale, cfg_schedule, temperature, top_k, top_p)."""
        self.model = model
        self.out_dir = Path(out_dir)
        self.answer = dict(answer or {})
        self.draw_settings = dict(draw or {})
        self.seed = seed
        self.draws = 0
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = []
        self.images: list[Image.Image] = []
        self.image_paths: list[str] = []
        self.pending: list[tuple[Image.Image, str]] = []

    def attach(self, path: str | Path) -> None:
        """Queue an image (loaded now, so a bad file fails here) for the next question."""
        self.pending.append((load_image(path), str(path)))

    def ask(self, text: str) -> Iterator[str]:
        """Add a user turn (with any attached images) and stream the reply; the reply joins the conversation
        once it is complete."""
        if not text.strip():
            raise ValueError("empty message")
        content = "".join(f"{IMAGE_TOKEN}\n" for _ in self.pending) + text
        messages = self.messages + [{"role": "user", "content": content}]
        images = self.images + [im for im, _ in self.pending]
        stream = self.model.stream_chat(messages, images, **self.answer)  # validates before anything changes
        self.messages = messages
        self.images = images
        self.image_paths += [p for _, p in self.pending]
        self.pending = []
        pieces = []
        for piece in stream:
            pieces.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(pieces)})

    def draw(self, prompt: str) -> Path:
        """Generate one image for `prompt`, save it as PNG, and add the request and the image to the chat."""
        if not prompt.strip():
            raise ValueError("empty prompt: /draw needs a description")
        out = generate_images(self.model, [prompt], num_images=1, seed=self.seed + self.draws, **self.draw_settings)
        self.draws += 1
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"draw_{self.draws:03d}.png"
        image = out.images[0][0]
        image.save(path)
        self.messages.append({"role": "user", "content": self.model.config.t2i_prompt.format(caption=prompt)})
        self.messages.append({"role": "assistant", "content": IMAGE_TOKEN})
        self.images.append(image)
        self.image_paths.append(str(path))
        return path

    def save(self, path: str | Path) -> Path:
        """The transcript as JSON: messages, and the file of each image in `<image>` order."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"messages": self.messages, "images": self.image_paths}, indent=2) + "\n")
        return path
