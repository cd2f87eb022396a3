"""A multi-turn conversation with the unified model, where images go both ways.

`ChatSession` keeps the messages and their images. `attach(path)` queues an image for the next question. The model
draws by itself when it emits `<boi>` in a reply (the sampler takes over for the image's codes, then the text goes
on); `draw` forces a drawing: the assistant's reply to a text-to-image request. Either way the image is saved and
joins the conversation, so the next question can be about it (its continuous features are spliced in like those of
any attached image). The `vqrae chat` command is a thin terminal loop over this class.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from vqrae.data.images import load_image

from .generation import DrawnImage, generate_images, stream_reply
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

    def ask(self, text: str) -> Iterator[str | Path]:
        """Add a user turn (with any attached images) and stream the reply: text pieces, and the path of every image
        the model draws by itself (it emitted `<boi>`; saved as PNG, and part of the conversation from then on like
        any other image). The reply joins the conversation once it is complete."""
        if not text.strip():
            raise ValueError("empty message")
        content = "".join(f"{IMAGE_TOKEN}\n" for _ in self.pending) + text
        messages = self.messages + [{"role": "user", "content": content}]
        images = self.images + [im for im, _ in self.pending]
        stream = stream_reply(self.model, messages, images, draw=self.draw_settings,  # validates first
                              draw_seed=self.seed + self.draws, **self.answer)
        self.messages = messages
        self.images = images
        self.image_paths += [p for _, p in self.pending]
        self.pending = []
        reply = []
        for piece in stream:
            if isinstance(piece, DrawnImage):
                path = self._save(piece.image)
                self.images.append(piece.image)
                self.image_paths.append(str(path))
                reply.append(IMAGE_TOKEN)
                yield path
            else:
                reply.append(piece)
                yield piece
        self.messages.append({"role": "assistant", "content": "".join(reply)})

    def _save(self, image: Image.Image) -> Path:
        self.draws += 1
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"draw_{self.draws:03d}.png"
        image.save(path)
        return path

    def draw(self, prompt: str) -> Path:
        """Generate one image for `prompt`, save it as PNG, and add the request and the image to the chat."""
        if not prompt.strip():
            raise ValueError("empty prompt: /draw needs a description")
        out = generate_images(self.model, [prompt], num_images=1, seed=self.seed + self.draws, **self.draw_settings)
        image = out.images[0][0]
        path = self._save(image)
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
