"""A multi-turn conversation with the unified model, where images go both ways.

`ChatSession` keeps the messages, the images attached to them and the drawings made in them. `attach(path)` queues
an image for the next question: it joins the conversation as an `<image>` (its continuous features are spliced in).
A drawing joins it as the model made it: `<boi>` + its h*w codes + `<eoi>` in the assistant's turn, the format of
the training data (a message holds `<boi>`, `drawings` holds the codes; see `UnifiedProcessor.encode_conversation`).
The model draws by itself when it emits `<boi>` in a reply (the sampler takes over for the codes, then the text goes
on); `draw` forces a drawing: the assistant's reply to a text-to-image request, exactly a text-to-image training
record. Either way the image is saved as PNG, and the next question can be about it.

What the user types, and what the model says, is escaped (`UnifiedProcessor.escape`) before it joins the
conversation: text never turns into an `<image>`, a `<boi>` or a template's control token. The `vqrae chat` command
is a thin terminal loop over this class.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from vqrae.data.images import load_image

from .generation import DrawnImage, generate_images, stream_reply
from .modeling import UnifiedModel
from .vocab import BOI_TOKEN, IMAGE_TOKEN

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
        self.images: list[Image.Image] = []  # one per <image> of the messages, in order
        self.image_paths: list[str] = []
        self.drawings: list[torch.Tensor] = []  # (h, w) codes, one per <boi> of the messages, in order
        self.drawing_paths: list[str] = []
        self.pending: list[tuple[Image.Image, str]] = []

    def attach(self, path: str | Path) -> None:
        """Queue an image (loaded now, so a bad file fails here) for the next question."""
        self.pending.append((load_image(path), str(path)))

    def ask(self, text: str) -> Iterator[str | Path]:
        """Add a user turn (with any attached images) and stream the reply: text pieces, and the path of every image
        the model draws by itself (it emitted `<boi>`; saved as PNG, and part of the conversation from then on as
        its codes). The question and the reply join the conversation once the reply is complete; a reply that fails
        or is abandoned leaves the conversation (and the attached images) as they were."""
        if not text.strip():
            raise ValueError("empty message")
        escape = self.model.processor.escape
        content = "".join(f"{IMAGE_TOKEN}\n" for _ in self.pending) + escape(text)
        messages = self.messages + [{"role": "user", "content": content}]
        images = self.images + [im for im, _ in self.pending]
        stream = stream_reply(self.model, messages, images, draw=self.draw_settings,  # validates first
                              draw_seed=self.seed + self.draws, drawings=self.drawings, **self.answer)
        texts = [""]  # the reply's text before, between and after its drawings
        drawn: list[tuple[torch.Tensor, str]] = []
        for piece in stream:
            if isinstance(piece, DrawnImage):
                path = self._save(piece.image)
                texts.append("")
                drawn.append((piece.codes, str(path)))
                yield path
            else:
                texts[-1] += piece
                yield piece
        # Sampled text is no more trusted than typed text (escaped whole: a "<image>" may come in two pieces).
        reply = BOI_TOKEN.join(escape(t) for t in texts)
        self.messages = messages + [{"role": "assistant", "content": reply}]
        self.images = images
        self.image_paths += [p for _, p in self.pending]
        self.pending = []
        self._keep_drawings(drawn)

    def _keep_drawings(self, drawn: list[tuple[torch.Tensor, str]]) -> None:
        for codes, path in drawn:
            self.drawings.append(codes.detach().cpu().long())
            self.drawing_paths.append(path)

    def _save(self, image: Image.Image) -> Path:
        self.draws += 1
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"draw_{self.draws:03d}.png"
        image.save(path)
        return path

    def draw(self, prompt: str) -> Path:
        """Generate one image for `prompt`, save it as PNG, and add the request (a user turn: the text-to-image
        prompt) and the drawing (an assistant turn: `<boi>` with the image's codes) to the chat."""
        if not prompt.strip():
            raise ValueError("empty prompt: /draw needs a description")
        out = generate_images(self.model, [prompt], num_images=1, seed=self.seed + self.draws, **self.draw_settings)
        path = self._save(out.images[0][0])
        request = self.model.config.t2i_prompt.replace("{caption}", self.model.processor.escape(prompt))
        self.messages.append({"role": "user", "content": request})
        self.messages.append({"role": "assistant", "content": BOI_TOKEN})
        self._keep_drawings([(out.codes[0, 0], str(path))])
        return path

    def save(self, path: str | Path) -> Path:
        """The transcript as JSON: messages; the file of each attached image in `<image>` order; each drawing in
        `<boi>` order as its PNG file and its (h, w) codes in [0, K) (`ChatSession.drawings`; the model saw the ids
        code_offset + code). Text is stored escaped, as the model saw it (zero-width spaces show as \\u200b)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        drawings = [{"file": f, "codes": codes.tolist()} for f, codes in zip(self.drawing_paths, self.drawings)]
        record = {"messages": self.messages, "images": self.image_paths, "drawings": drawings}
        path.write_text(json.dumps(record, indent=2) + "\n")
        return path
