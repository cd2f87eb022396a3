"""The one sampler: CFG, KV cache, code range, seeds, filtering, text streaming."""

from __future__ import annotations

import pytest
import torch

from vqrae.tokenizer import VQRAE
from vqrae.tokenizer.testing import tiny_vqrae_config
from vqrae.unified_model import UnifiedModel, generate_text, generation, sample_image_codes, validate_sampling
from vqrae.unified_model.generation import (
    NonFiniteLogitsError,
    candidates,
    guidance_scale_at,
    iter_text_tokens,
    sample,
)
from vqrae.unified_model.testing import tiny_llm, tiny_text_tokenizer, tiny_unified_model

PROMPTS = ["a red circle", "a green triangle above a yellow circle on the left"]  # different lengths: padding

# Two computations of the same logits in a different float order (cached vs recomputed attention, another batch
# size or padding) agree to ~1e-7 here; a real bug (a KV cache off by one position) moves them by ~2e-4. Tokens
# are compared only where float order cannot decide them: two paths are fed the same tokens, and their logits
# must agree within ATOL.
ATOL = 1e-5


def separate_codes(model, seed: int = 0):
    """Re-draw the code rows of every embedding table as random vectors, spread like the text rows.

    The projected codebook of a random tiny VQRAE gives nearly parallel code rows: all 64 code logits lie within
    ~3e-3 of each other, so greedy margins of ~1e-5 (down to exact ties) are common, and which of two tied codes
    wins depends on the machine's float order. Separated rows keep margins above ~1e-3.
    """
    off = model.config.code_offset
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tables = {id(t): t for t in (model.llm.get_input_embeddings(), model.llm.get_output_embeddings())}
        for table in tables.values():
            w = table.weight
            w[off:] = (torch.randn(w.shape[0] - off, w.shape[1], generator=g) * w[:off].float().std()).to(w.dtype)
    return model


@pytest.fixture(scope="module")
def um():
    return separate_codes(tiny_unified_model(seed=0))


def trace_steps(monkeypatch, force=None) -> dict:
    """Record what the sampler's loop (`generation.decode`) sees and picks at every step of the next calls.

    trace["logits"][k] / trace["ids"][k]: the (rows, V) logits of the k-th step (over all calls) and the ids fed
    back. `force(k, ids)` returns the ids to feed back instead of the chosen `ids` (teacher forcing): so two runs
    see the same tokens and their logits can be compared step by step.
    """
    real = getattr(generation.decode, "untraced", generation.decode)  # a later trace replaces an earlier one
    trace = {"logits": [], "ids": []}

    def decode(*args, **kwargs):
        def recorded(step, logits):
            ids = choose(step, logits)
            if force is not None:
                ids = force(len(trace["ids"]), ids)
            trace["logits"].append(logits.detach().clone())
            trace["ids"].append(ids.clone())
            return ids

        args = list(args)
        if "choose" in kwargs:
            choose, kwargs["choose"] = kwargs["choose"], recorded
        else:  # decode(llm, inputs_embeds, attention_mask, num_steps, choose, ...)
            choose, args[4] = args[4], recorded
        return real(*args, **kwargs)

    decode.untraced = real
    monkeypatch.setattr(generation, "decode", decode)
    return trace


def assert_close_steps(a: list, b: list, rows_a=slice(None), rows_b=slice(None)):
    assert len(a) == len(b) and a
    for k, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(x[rows_a], y[rows_b], atol=ATOL, rtol=0, msg=lambda m, k=k: f"step {k}: {m}")


def assert_greedy(scores: torch.Tensor, picked: torch.Tensor):
    """Each row's `picked` index holds its maximum score up to float noise (a near-tie may go either way)."""
    got = scores.gather(-1, picked.reshape(-1, 1))[:, 0]
    assert bool((got >= scores.max(-1).values - ATOL).all()), (got, scores.max(-1).values)


def test_greedy_cfg_scale_one_equals_plain_greedy(um, monkeypatch):
    lo, hi = um.config.code_range
    b = len(PROMPTS)
    # Guidance does change the result (the unconditional rows are really there).
    plain = sample_image_codes(um, PROMPTS, [0, 1], cfg_scale=None, temperature=0.0)
    assert not torch.equal(plain, sample_image_codes(um, PROMPTS, [0, 1], cfg_scale=5.0, temperature=0.0))
    cfg_trace = trace_steps(monkeypatch)
    cfg1 = sample_image_codes(um, PROMPTS, [0, 1], cfg_scale=1.0, temperature=0.0)
    # Plain greedy (no unconditional rows), fed the tokens CFG 1.0 chose, sees the same conditional logits...
    plain_trace = trace_steps(monkeypatch, force=lambda k, ids: cfg_trace["ids"][k][:b])
    sample_image_codes(um, PROMPTS, [0, 1], cfg_scale=None, temperature=0.0)
    assert_close_steps(cfg_trace["logits"], plain_trace["logits"], rows_a=slice(0, b))
    # ... and CFG 1.0 picked their argmax at every step: the unconditional rows do not move it.
    for k, logits in enumerate(cfg_trace["logits"]):
        assert_greedy(logits[:b, lo:hi], cfg1[:, k])


SETTINGS = [
    {"cfg_scale": 3.0, "temperature": 0.0},
    {"cfg_scale": 3.0, "temperature": 1.0, "top_k": 20, "top_p": 0.9},
    {"cfg_scale": 2.0, "cfg_schedule": "linear", "temperature": 0.7},
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_kv_cache_equals_recompute(um, monkeypatch, settings):
    cached_trace = trace_steps(monkeypatch)
    cached = sample_image_codes(um, PROMPTS, [3, 4], use_cache=True, **settings)
    # Recompute everything at each step, fed the tokens the cached run chose: the logits agree at every step.
    full_trace = trace_steps(monkeypatch, force=lambda k, ids: cached_trace["ids"][k])
    full = sample_image_codes(um, PROMPTS, [3, 4], use_cache=False, **settings)
    assert torch.equal(full, cached)  # forced: both runs decoded the same image, so every step is compared
    assert len(full_trace["logits"]) == um.config.num_image_tokens
    # The recomputed path's own choices can differ only where logits within ATOL decide: a near-tie.
    assert_close_steps(cached_trace["logits"], full_trace["logits"])


def test_kv_cache_check_catches_a_cache_off_by_one_position(um, monkeypatch):
    """The tolerance above is tight enough to see a real KV-cache bug: cached steps at the wrong position."""
    full_trace = trace_steps(monkeypatch)
    sample_image_codes(um, PROMPTS, [3, 4], use_cache=False, **SETTINGS[0])
    forward, shifted = um.llm.forward, []

    def off_by_one(*args, **kwargs):
        embeds, pos = kwargs.get("inputs_embeds"), kwargs.get("position_ids")
        if embeds is not None and embeds.shape[1] == 1 and pos is not None:  # a cached step
            kwargs["position_ids"] = pos + 1
            shifted.append(1)
        return forward(*args, **kwargs)

    monkeypatch.setattr(um.llm, "forward", off_by_one)
    broken_trace = trace_steps(monkeypatch, force=lambda k, ids: full_trace["ids"][k])
    sample_image_codes(um, PROMPTS, [3, 4], use_cache=True, **SETTINGS[0])
    assert shifted  # the bug was really injected
    with pytest.raises(AssertionError):
        assert_close_steps(full_trace["logits"], broken_trace["logits"])


@pytest.mark.parametrize("scale", [1.5, 3.0])
def test_cfg_mixes_logits_as_documented(um, scale):
    """Step 0 of greedy CFG picks argmax(cond + (s-1)(cond - uncond)) over the code range."""
    proc, (lo, hi) = um.processor, um.config.code_range
    with torch.no_grad():
        mixed = []
        for prompt in PROMPTS:
            cond, uncond = (um.llm(input_ids=torch.tensor([ids])).logits[0, -1, lo:hi]
                            for ids in (proc.t2i_prompt_ids(prompt), proc.t2i_prompt_ids(prompt, uncond=True)))
            mixed.append(cond + (scale - 1.0) * (cond - uncond))
    got = sample_image_codes(um, PROMPTS, [0, 1], cfg_scale=scale, temperature=0.0)
    assert_greedy(torch.stack(mixed), got[:, 0])  # computed unbatched here, batched there: equal up to float order


def test_every_sampled_token_is_a_code_even_when_text_dominates():
    # Make every non-code token overwhelmingly likely: restriction to the code range must still hold.
    model = tiny_unified_model(seed=2)
    lo = model.config.code_offset
    with torch.no_grad():
        model.llm.get_output_embeddings().weight[:lo] *= 100.0
        logits = model.llm(input_ids=torch.tensor([model.processor.t2i_prompt_ids("a red circle")])).logits
        assert int(logits[0, -1].argmax()) < lo  # the model itself would not pick a code
    k = model.config.codebook_size
    out = model.generate_images(["a red circle", "a blue square"], num_images=8, cfg_scale=4.0,
                                temperature=1.5, seed=0, batch_size=16)
    assert out.codes.shape == (2, 8, 4, 4)
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < k
    assert len(out.codes.unique()) > 16  # many seeds, many different codes
    assert all(im.size == (32, 32) for row in out.images for im in row)


def test_seeds_reproduce_and_do_not_depend_on_batching(um, monkeypatch):
    kw = {"num_images": 3, "cfg_scale": 3.0, "temperature": 1.0, "top_k": 30}
    n, rows = um.config.num_image_tokens, 6  # 2 prompts x 3 images; CFG rows: 6 conditional, then 6 unconditional
    real_uniforms, seeds = generation.row_uniforms, []
    monkeypatch.setattr(generation, "row_uniforms", lambda s, *a, **k: seeds.append(list(s)) or real_uniforms(s, *a, **k))
    a_trace = trace_steps(monkeypatch)
    a = um.generate_images(PROMPTS, batch_size=6, seed=11, **kw)
    assert a.seeds == [[11, 12, 13], [14, 15, 16]] and seeds == [[11, 12, 13, 14, 15, 16]]
    assert not torch.equal(a.codes[:, 0], a.codes[:, 1])  # different seeds, different images

    # Batches of 2 images: each image draws the same uniforms (its own seed) and, fed the same tokens as in the
    # batch of 6, sees the same logits at every step (up to float order), so it is the same image.
    def rows_of_chunk(chunk):
        items = [2 * chunk, 2 * chunk + 1]
        return items + [rows + i for i in items]

    seeds.clear()
    b_trace = trace_steps(monkeypatch, force=lambda k, ids: a_trace["ids"][k % n][rows_of_chunk(k // n)])
    um.generate_images(PROMPTS, batch_size=2, seed=11, **kw)
    assert seeds == [[11, 12], [13, 14], [15, 16]]
    assert torch.equal(real_uniforms([12, 13], n, "cpu"), real_uniforms([11, 12, 13], n, "cpu")[1:])
    assert len(b_trace["logits"]) == 3 * n
    for chunk in range(3):
        assert_close_steps(a_trace["logits"][:n], b_trace["logits"][chunk * n : (chunk + 1) * n],
                           rows_a=rows_of_chunk(chunk))

    # Image i of prompt p uses seed + p * num_images + i; the same call again gives the same images.
    monkeypatch.setattr(generation, "decode", generation.decode.untraced)
    seeds.clear()
    c = um.generate_images(PROMPTS, batch_size=6, seed=12, **kw)
    assert seeds == [[12, 13, 14, 15, 16, 17]] and c.seeds == [[12, 13, 14], [15, 16, 17]]
    assert torch.equal(um.generate_images(PROMPTS, batch_size=6, seed=11, **kw).codes, a.codes)


def test_filtering_and_sampling_primitives():
    logits = torch.tensor([[0.0, 4.0, 1.0, 3.0, 2.0]])
    probs = logits.softmax(-1)[0]
    g = torch.Generator().manual_seed(0)

    def support(**kw):
        draws = torch.cat([sample(logits, 1.0, uniforms=torch.rand(1, generator=g), **kw) for _ in range(600)])
        return draws

    assert set(support(top_k=2, top_p=1.0).tolist()) == {1, 3}
    assert set(support(top_k=0, top_p=float(probs[1] + 0.5 * probs[3])).tolist()) == {1, 3}
    assert set(support(top_k=3, top_p=float(probs[1] * 0.5)).tolist()) == {1}
    cand, index = candidates(logits, 1.0, top_k=0, top_p=1.0)
    assert index is None and torch.equal(cand, logits)
    assert int(sample(logits, 0.0, 0, 1.0, None)) == 1
    # Inverse CDF over the vocabulary: the uniform picks the token whose interval contains it.
    u = (probs[0] + probs[1] * 0.5).reshape(1)
    assert int(sample(logits, 1.0, 0, 1.0, u)) == 1
    assert int(sample(logits, 1.0, 0, 1.0, torch.zeros(1))) == 0
    draws = support(top_k=0, top_p=1.0)
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert torch.allclose(freq, probs, atol=0.05)
    draws = support(top_k=4, top_p=1.0)  # renormalised over the 4 best
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert freq[0] == 0 and torch.allclose(freq[1:], probs[1:] / probs[1:].sum(), atol=0.05)
    assert guidance_scale_at(0, 5, 3.0, "linear") == 1.0 and guidance_scale_at(4, 5, 3.0, "linear") == 3.0
    assert guidance_scale_at(2, 5, 3.0, "constant") == 3.0


@pytest.mark.parametrize("bad, match", [
    ({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -3}, "top_k"), ({"cfg_scale": -1.0}, "cfg_scale"), ({"cfg_schedule": "cosine"}, "schedule"),
])
def test_nonsensical_sampling_values_are_rejected(um, bad, match):
    with pytest.raises(ValueError, match=match):
        validate_sampling(**bad)
    with pytest.raises(ValueError, match=match):
        um.generate_images(["a red circle"], **bad)


def test_empty_prompt_is_rejected(um):
    with pytest.raises(ValueError, match="empty"):
        um.generate_images(["a red circle", "  "])


def test_streamed_answer_equals_batched_answer_and_stops(um):
    msgs = [{"role": "user", "content": "<image>\nwhat colour is the square?"}]
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    pieces = list(um.stream_chat(msgs, [img], max_new_tokens=12))
    prompt, _ = um.processor.encode_conversation(msgs, add_generation_prompt=True)
    batched = generate_text(um, [prompt, prompt[:-3]], um.processor.pixel_values([img, img]), max_new_tokens=12)
    assert "".join(pieces) == batched[0] and len(pieces) >= 1
    assert um.chat(msgs, [img], max_new_tokens=12) == batched[0]
    # A stop token ends the answer where it appears (and is not part of it).
    free = [int(t[0]) for t in iter_text_tokens(um, [prompt], um.processor.pixel_values([img]), max_new_tokens=4)]
    saved = um.processor.stop_token_ids
    um.processor.stop_token_ids = saved + [free[2]] if free[2] not in free[:2] else saved + [free[0]]
    try:
        expected = um.text_tokenizer.decode(free[:2], skip_special_tokens=True) if free[2] not in free[:2] else ""
        assert um.chat(msgs, [img], max_new_tokens=12) == expected
    finally:
        um.processor.stop_token_ids = saved
    with pytest.raises(ValueError, match="placeholder"):
        um.chat(msgs, [])


def test_text_answers_never_contain_codes_or_image_specials(um):
    msgs = [{"role": "user", "content": "how many shapes are there?"}]
    prompt, _ = um.processor.encode_conversation(msgs, add_generation_prompt=True)
    toks = torch.cat([t for t in iter_text_tokens(um, [prompt], max_new_tokens=30, temperature=2.0, seed=1)])
    allowed = um.text_token_mask()
    assert bool(allowed[toks].all())


# ----- broken logits, stop tokens -----
def _with_head_bias(model, bias: torch.Tensor):
    head = model.llm.get_output_embeddings()
    head.bias = torch.nn.Parameter(bias)
    return model


@pytest.mark.parametrize("where", ["everywhere", "one code"])
def test_nan_logits_are_an_error_not_a_token(where):
    model = tiny_unified_model(seed=3)
    lo = model.config.code_offset
    with torch.no_grad():
        weight = model.llm.get_output_embeddings().weight
        weight[lo + 5 if where == "one code" else slice(None)] = float("nan")  # argmax would pick a NaN code
    with pytest.raises(NonFiniteLogitsError, match="NaN logits at step 0"):
        model.generate_images(["a red circle"], num_images=1, cfg_scale=3.0, temperature=0.0, seed=0)
    with pytest.raises(NonFiniteLogitsError, match="NaN logits at step 0"):
        sample_image_codes(model, ["a red circle"], [0], cfg_scale=None, temperature=1.0)
    if where == "everywhere":
        with pytest.raises(NonFiniteLogitsError, match="NaN logits at step 0 .*text token"):
            model.chat([{"role": "user", "content": "how many shapes?"}], max_new_tokens=4)


def test_minus_inf_everywhere_is_an_error_not_a_token():
    model = tiny_unified_model(seed=3)
    vocab = model.llm.get_output_embeddings().weight.shape[0]
    _with_head_bias(model, torch.full((vocab,), float("-inf")))
    for temperature in (0.0, 1.0):
        with pytest.raises(NonFiniteLogitsError, match="-inf .* at step 0"):
            sample_image_codes(model, ["a red circle"], [0], cfg_scale=None, temperature=temperature)
        with pytest.raises(NonFiniteLogitsError, match="-inf .* at step 0"):
            model.chat([{"role": "user", "content": "how many shapes?"}], max_new_tokens=4, temperature=temperature)
    # Only the text tokens at -inf: image codes are still sampled fine, text is an error.
    bias = torch.zeros(vocab)
    bias[: model.config.code_offset] = float("-inf")
    _with_head_bias(model, bias)
    assert sample_image_codes(model, ["a red circle"], [0], cfg_scale=None, temperature=0.0).shape == (1, 16)
    with pytest.raises(NonFiniteLogitsError, match="every allowed text token"):
        model.chat([{"role": "user", "content": "how many shapes?"}], max_new_tokens=4)


def test_eos_stops_the_answer_when_it_is_also_the_pad_token():
    """Many LLM tokenizers have no pad token and use EOS for it; the text mask bans pad, never a stop token."""
    torch.manual_seed(0)
    tok = tiny_text_tokenizer()
    tok.pad_token = tok.eos_token
    model = UnifiedModel.from_components(tiny_llm(len(tok)), tok, VQRAE(tiny_vqrae_config()).eval(),
                                         template="plain").eval()
    eos = tok.eos_token_id
    assert model.config.pad_token_id == eos and model.processor.stop_token_ids == [eos]
    vocab = model.llm.get_output_embeddings().weight.shape[0]
    bias = torch.zeros(vocab)
    bias[eos] = 1000.0  # the model wants to stop at once
    _with_head_bias(model, bias)
    prompt, _ = model.processor.encode_conversation([{"role": "user", "content": "how many shapes?"}], True)
    steps = [int(t[0]) for t in iter_text_tokens(model, [prompt], max_new_tokens=6)]
    assert steps == [eos]  # it stopped at the first step
    assert model.chat([{"role": "user", "content": "how many shapes?"}], max_new_tokens=6) == ""
    assert generate_text(model, [prompt, prompt[2:]], max_new_tokens=6) == ["", ""]
