"""The model draws by itself in a chat: when it emits <boi>, the image sampler takes over (codes only, guided),
the image is decoded and joins the conversation, and the text goes on after <eoi>."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vqrae.unified_model.chat import ChatSession
from vqrae.unified_model.generation import DrawnImage, sample_codes, stream_chat, stream_reply
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
    session = ChatSession(eager_drawer, out_dir=tmp_path, answer={"max_new_tokens": 3}, seed=2)
    pieces = list(session.ask("draw a blue square"))
    paths = [p for p in pieces if not isinstance(p, str)]
    assert paths and all(p.is_file() for p in paths)
    assert session.image_paths == [str(p) for p in paths] and len(session.images) == len(paths)
    reply = session.messages[-1]
    assert reply["role"] == "assistant" and reply["content"].count("<image>") == len(paths)
    # the next question sees the drawings: the conversation's <image> count matches its images
    list(session.ask("what did you draw?"))
    assert session.messages[-2]["content"] == "what did you draw?" and len(session.images) >= len(paths)
