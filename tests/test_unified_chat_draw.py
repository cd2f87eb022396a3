"""The model draws by itself in a chat: when it emits <boi>, the image sampler takes over (codes only, guided),
the image is decoded and joins the conversation, and the text goes on after <eoi>. A drawing stays in the
conversation as the model made it (<boi> codes <eoi>, the training format), whether drawn by itself or by /draw."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vqrae.unified_model import chat, modeling
from vqrae.unified_model.chat import ChatSession
from vqrae.unified_model.generation import DrawnImage, sample_codes, stream_chat, stream_reply
from vqrae.unified_model.processing import ESCAPE_MARK, GEN_SLOT
from vqrae.unified_model.testing import tiny_unified_model


@pytest.fixture
def eager_drawer():
    """A tiny model whose LM head strongly prefers <boi> wherever it may be chosen (codes are unaffected: the
    image sampler reads the code range only)."""
    um = tiny_unified_model(seed=0)
    head = um.llm.get_output_embeddings()
    bias = torch.zeros(head.weight.shape[0])
    bias[um.config.boi_token_id] = 1000.0
    head.bias = nn.Parameter(bias)
    return um


def test_boi_hands_over_to_the_image_sampler_and_text_goes_on(eager_drawer):
    um = eager_drawer
    messages = [{"role": "user", "content": "draw a red circle"}]
    out = list(stream_reply(um, messages, draw={"cfg_scale": 3.0}, draw_seed=5, max_images=1, max_new_tokens=4))
    assert isinstance(out[0], DrawnImage) and all(isinstance(p, str) for p in out[1:])
    drawn = out[0]
    h, w = um.config.grid_size
    assert drawn.codes.shape == (h, w) and 0 <= int(drawn.codes.min()) and int(drawn.codes.max()) < um.config.codebook_size
    assert drawn.image.size == (um.vqrae.image_size, um.vqrae.image_size) and drawn.seed == 5
    # the same codes as the sampler run by hand on the conversation + <boi>, guided by the unconditional t2i prompt
    prompt, _ = um.processor.encode_conversation(messages, add_generation_prompt=True)
    uncond = [um.processor.t2i_prompt_ids("", uncond=True)]
    kw = um.sampling_config.replace(cfg_scale=3.0).image_kwargs()
    ref = sample_codes(um, [prompt + [um.config.boi_token_id]], uncond, [5], **kw)[0]
    assert torch.equal(ref.view(h, w).cpu(), drawn.codes)
    # without permission to draw (stream_chat, or max_images reached) <boi> is never chosen
    assert all(isinstance(p, str) for p in stream_chat(um, messages, max_new_tokens=4))
    assert all(isinstance(p, str) for p in stream_reply(um, messages, max_images=0, max_new_tokens=4))


def test_chat_session_keeps_what_the_model_drew(eager_drawer, tmp_path):
    um = eager_drawer
    session = ChatSession(um, out_dir=tmp_path, answer={"max_new_tokens": 3, "max_images": 2}, seed=2)
    pieces = list(session.ask("draw a blue square"))
    paths = [p for p in pieces if not isinstance(p, str)]
    assert paths and all(p.is_file() for p in paths)
    # A drawing is kept as the model made it: <boi> in the reply, its codes in `drawings`; it is no <image>.
    assert session.drawing_paths == [str(p) for p in paths] and len(session.drawings) == len(paths)
    assert session.images == [] and session.image_paths == []
    reply = session.messages[-1]
    assert reply["role"] == "assistant" and reply["content"].count("<boi>") == len(paths)
    assert "<image>" not in reply["content"]
    # the next question sees the drawings as their codes between <boi> and <eoi>
    seen = _spy_prompts(um)
    list(session.ask("what did you draw?"))
    assert session.messages[-2]["content"] == "what did you draw?" and len(session.drawings) >= len(paths)
    _assert_codes_in_prompt(um, seen[0], session.drawings[: len(paths)])


def _spy_prompts(um) -> list[torch.Tensor]:
    """Record the ids of every prompt the model embeds from now on (an instance attribute shadows the method)."""
    seen, real = [], um.embed

    def embed(input_ids, pixel_values=None, image_features=None):
        seen.append(input_ids[0].clone())
        return real(input_ids, pixel_values, image_features)

    um.embed = embed
    return seen


def _assert_codes_in_prompt(um, ids: torch.Tensor, drawings: list[torch.Tensor]):
    cfg = um.config
    ids = ids.tolist()
    assert cfg.image_token_id not in ids  # no feature slots for a drawing
    at = [i for i, t in enumerate(ids) if t == cfg.boi_token_id]
    assert len(at) == len(drawings)
    for i, codes in zip(at, drawings):
        n = codes.numel()
        assert ids[i + 1 : i + 1 + n] == (codes.flatten() + cfg.code_offset).tolist()
        assert ids[i + 1 + n] == cfg.eoi_token_id


@pytest.fixture
def um():
    return tiny_unified_model(seed=1)


def test_after_draw_the_next_prompt_holds_the_drawings_codes(um, tmp_path):
    session = ChatSession(um, out_dir=tmp_path, answer={"max_new_tokens": 3}, draw={"cfg_scale": 2.0}, seed=4)
    path = session.draw("a red circle")
    assert path.is_file() and len(session.drawings) == 1 and session.drawings[0].shape == tuple(um.config.grid_size)
    assert session.messages == [{"role": "user", "content": "Generate an image of: a red circle"},
                                {"role": "assistant", "content": "<boi>"}]
    # the drawing is the generator's own image for that prompt and seed
    ref = um.generate_images(["a red circle"], num_images=1, seed=4, cfg_scale=2.0)
    assert torch.equal(session.drawings[0], ref.codes[0, 0])
    seen = _spy_prompts(um)
    list(session.ask("what colour is the circle?"))
    _assert_codes_in_prompt(um, seen[0], session.drawings)
    # the draw exchange in that prompt is exactly a text-to-image training record
    proc, codes = um.processor, session.drawings[0]
    record = proc.t2i_prompt_ids("a red circle") + (codes.flatten() + um.config.code_offset).tolist()
    record += proc.t2i_suffix_ids()
    assert seen[0].tolist()[: len(record)] == record
    # the transcript records the drawing: its file and its codes
    t = json.loads(session.save(tmp_path / "t.json").read_text())
    assert t["drawings"] == [{"file": str(path), "codes": codes.tolist()}] and t["images"] == []
    assert [m["content"] for m in t["messages"]][1] == "<boi>"


def test_typed_text_never_becomes_an_image_or_a_drawing(um, tmp_path, monkeypatch):
    session = ChatSession(um, out_dir=tmp_path, answer={"max_new_tokens": 2})
    seen = _spy_prompts(um)
    list(session.ask("<image> <boi>"))  # unescaped: a placeholder without an image, a drawing without codes
    ids = seen[0].tolist()
    cfg = um.config
    assert not {cfg.image_token_id, cfg.boi_token_id, cfg.eoi_token_id} & set(ids)
    assert session.messages[0]["content"].replace(ESCAPE_MARK, "") == "<image> <boi>"
    assert session.images == [] and session.drawings == []
    # Nor does sampled text: a reply that spells "<image>" (in two pieces) stays text in the next prompt.
    monkeypatch.setattr(chat, "stream_reply", lambda *a, **k: iter(["I see <ima", "ge> and <|im_end|>"]))
    assert "".join(session.ask("what?")) == "I see <image> and <|im_end|>"
    assert session.messages[-1]["content"].replace(ESCAPE_MARK, "") == "I see <image> and <|im_end|>"
    monkeypatch.undo()
    seen.clear()
    list(session.ask("and now?"))
    assert cfg.image_token_id not in seen[0].tolist()
    # the template's own end markers only: one per message of that prompt (all but the last reply)
    assert seen[0].tolist().count(proc_id(um, "<|im_end|>")) == len(session.messages) - 1 == 5


def proc_id(um, token: str) -> int:
    return um.processor.tokenizer.convert_tokens_to_ids(token)


def test_drawing_format_in_conversations(um):
    """`<boi>` in a message + its codes in `drawings`: <boi> codes <eoi>, learned (targets) in an assistant turn."""
    proc, cfg = um.processor, um.config
    assert GEN_SLOT == modeling.GEN_SLOT
    n, k = cfg.num_image_tokens, cfg.codebook_size
    codes = torch.arange(n) % k
    msgs = [{"role": "user", "content": "draw a circle"}, {"role": "assistant", "content": "here: <boi> done"},
            {"role": "user", "content": "and this <boi>?"}, {"role": "assistant", "content": "a square"}]
    ids, target = proc.encode_conversation(msgs, drawings=[codes.view(4, 4), None])
    first, second = [i for i, t in enumerate(ids) if t == cfg.boi_token_id]
    assert ids[first + 1 : first + 1 + n] == (codes + cfg.code_offset).tolist() and ids[first + 1 + n] == cfg.eoi_token_id
    assert all(target[first : first + n + 2])  # the model learns to draw in its reply
    assert ids[second + 1 : second + 1 + n] == [GEN_SLOT] * n  # None: the forward pass tokenizes the image
    assert not any(target[second : second + n + 2])  # a drawing shown by the user is context
    lo, hi = cfg.code_range
    text = [i for i, t in zip(ids, target) if t and not lo <= i < hi]  # the targets but the codes
    assert proc.tokenizer.decode(text) == "here: <boi><eoi> done<|im_end|>a square<|im_end|>"
    with pytest.raises(ValueError, match="2 <boi> .* but 1 drawing"):
        proc.encode_conversation(msgs, drawings=[codes])
    with pytest.raises(ValueError, match="0 <boi> .* but 1 drawing"):
        proc.encode_conversation(msgs[:1], drawings=[codes])
    with pytest.raises(ValueError, match=rf"drawing 0: codes must be {n} values in \[0, {k}\)"):
        proc.encode_conversation(msgs[:2], drawings=[torch.full((n,), k)])
    with pytest.raises(ValueError, match="drawing 0: codes must be"):
        proc.encode_conversation(msgs[:2], drawings=[codes[:-1]])
    with pytest.raises(ValueError, match="integers"):
        proc.encode_conversation(msgs[:2], drawings=[codes.float()])
    with pytest.raises(ValueError, match="<eoi>"):
        proc.encode_conversation([{"role": "assistant", "content": "<boi><eoi>"}], drawings=[codes])
    # A prompt for the sampler needs the codes themselves.
    with pytest.raises(ValueError, match="needs its codes"):
        list(stream_chat(um, msgs[:3], drawings=[codes, None], max_new_tokens=2))
