"""UnifiedModel: save/load, feature splicing, vocabulary layout, label masks, collator, training forward."""

from __future__ import annotations

import json

import pytest
import torch

from vqrae.unified_model import GEN_SLOT, IGNORE_INDEX, UnifiedCollator, UnifiedModel, get_template
from vqrae.unified_model.testing import tiny_unified_model


@pytest.fixture(scope="module")
def um():
    return tiny_unified_model(seed=0)


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 32, 32, generator=g) for _ in range(n)]


def _vqa(images=1, answer="blue"):
    q = "".join("<image>\n" for _ in range(images)) + "what colour is the square?"
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}],
            "images": _images(images, seed=images)}


def test_vocabulary_layout(um):
    c, tok = um.config, um.text_tokenizer
    assert c.code_offset >= len(tok)
    assert um.llm.get_input_embeddings().weight.shape[0] == c.code_offset + c.codebook_size
    assert um.llm.get_output_embeddings().weight.shape[0] == c.code_offset + c.codebook_size
    specials = {c.image_token_id, c.boi_token_id, c.eoi_token_id, c.uncond_token_id, c.pad_token_id}
    assert len(specials) == 5 and all(0 <= i < len(tok) for i in specials)
    # Every ChatML marker is one token, and text never tokenizes into the code range.
    for s in get_template("chatml").special_tokens:
        assert len(tok(s, add_special_tokens=False).input_ids) == 1
    assert max(um.processor.tokenize("a red circle <boi> <eoi> <image> " * 3)) < c.code_offset


def _mean_cosine(rows: torch.Tensor) -> float:
    unit = torch.nn.functional.normalize(rows.float(), dim=-1)
    sim = unit @ unit.T
    n = len(rows)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def test_code_embeddings_keep_the_projected_codebooks_geometry_and_differ(um):
    with torch.no_grad():
        proj = um.projector(um.vqrae.code_features())
        table = um.llm.get_input_embeddings().weight
        rows, text = table[um.config.code_offset:], table[: um.config.code_offset]
    centred = proj - proj.mean(0)
    # The rows are the centred projected codebook placed around the text mean: same directions once centred.
    cos = torch.nn.functional.cosine_similarity(centred, rows - text.mean(0), dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-4)
    # A random projector maps every code near one direction; the rows must not inherit that: they are as distinct
    # from each other as the text rows are.
    assert _mean_cosine(proj) > 0.5
    assert _mean_cosine(rows) < _mean_cosine(text) + 0.1
    radius = lambda r: float((r - text.mean(0)).norm(dim=-1).mean())
    assert abs(radius(rows) / radius(text) - 1) < 1e-3
    mean_model = tiny_unified_model(seed=0, code_init="mean")
    mrows = mean_model.llm.get_input_embeddings().weight[mean_model.config.code_offset:]
    assert not torch.allclose(torch.nn.functional.cosine_similarity(proj, mrows, dim=-1), torch.ones(len(proj)))


def _settings(d: dict) -> dict:
    """A config dict without what legitimately changes on a round trip (where it was loaded from, dtype notes)."""
    noise = ("_name_or_path", "dtype", "transformers_version")
    return {k: _settings(v) if isinstance(v, dict) else v for k, v in d.items() if k not in noise}


def test_save_load_identical_logits_and_samples(um, tmp_path):
    um.save_pretrained(tmp_path / "m")
    loaded = UnifiedModel.from_pretrained(tmp_path / "m")
    assert _settings(loaded.config.to_dict()) == _settings(um.config.to_dict())
    batch = UnifiedCollator(um.processor)([_vqa(2), {"caption": "a red circle", "image": _images(1)[0]}])
    with torch.no_grad():
        a, b = um(**batch, return_logits=True), loaded(**batch, return_logits=True)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    kw = {"num_images": 2, "cfg_scale": 3.0, "temperature": 1.0, "top_k": 20, "seed": 7}
    assert torch.equal(um.generate_images(["a red circle"], **kw).codes,
                       loaded.generate_images(["a red circle"], **kw).codes)
    mapped = UnifiedModel.from_pretrained(tmp_path / "m", device_map="auto")  # the accelerate loading path
    with torch.no_grad():
        assert torch.equal(mapped(**batch, return_logits=True).logits, a.logits)


def test_from_pretrained_missing_folder_or_file(um, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        UnifiedModel.from_pretrained(tmp_path / "nope")
    um.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        UnifiedModel.from_pretrained(tmp_path / "m")


def test_splicing_puts_each_images_features_at_its_slots(um):
    proc = um.processor
    n = um.config.num_image_features
    rows, images = [], []
    for k in (2, 0, 1):  # several images in one prompt, none, one; batch order = reading order
        ids, _ = proc.encode_conversation([{"role": "user", "content": "look " + "<image> and " * k + "say"}])
        rows.append(ids)
        images += _images(k, seed=10 + k)
    length = max(map(len, rows))
    ids = torch.tensor([r + [um.config.pad_token_id] * (length - len(r)) for r in rows])
    pixels = proc.pixel_values(images)
    with torch.no_grad():
        embeds = um.embed(ids, pixels)
        feats = um.projector(um.vqrae.encode(pixels))  # (3, N, h)
        plain = um.llm.get_input_embeddings()(ids)
    slots = ids == um.config.image_token_id
    assert slots.sum() == 3 * n
    assert torch.equal(embeds[~slots], plain[~slots])
    assert not slots[1].any()
    # row 0: images 0 and 1 (the second starts after its text); row 2: image 2
    r0 = torch.nonzero(slots[0]).flatten()
    assert torch.allclose(embeds[0, r0[:n]], feats[0]) and torch.allclose(embeds[0, r0[n:]], feats[1])
    r2 = torch.nonzero(slots[2]).flatten()
    assert torch.allclose(embeds[2, r2], feats[2])
    with pytest.raises(ValueError, match="slot"):
        um.embed(ids, pixels[:2])


def test_conversation_labels_are_answers_only(um):
    rec = {"conversations": [{"from": "human", "value": "<image>\nwhat colour is the square?"},
                             {"from": "gpt", "value": "blue"},
                             {"from": "human", "value": "how many shapes are there?"},
                             {"from": "gpt", "value": "two"}], "image": _images(1)[0]}
    batch = UnifiedCollator(um.processor)([rec])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert torch.equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])
    # The targets are exactly the two answers, each with the token that ends it.
    targets = labels.tolist()
    spans, cur = [], []
    for t in targets + [IGNORE_INDEX]:
        if t == IGNORE_INDEX:
            if cur:
                spans.append(um.text_tokenizer.decode(cur))
            cur = []
        else:
            cur.append(t)
    assert spans == ["blue<|im_end|>", "two<|im_end|>"]
    assert (ids == um.config.image_token_id).sum() == um.config.num_image_features
    assert batch["pixel_values"].shape == (1, 3, 32, 32)


def test_caption_labels_are_image_codes_only(um):
    img = _images(1, seed=3)[0]
    coll = UnifiedCollator(um.processor)
    batch = coll([{"caption": "a red circle", "image": img}])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    n = um.config.num_image_tokens
    assert (ids == GEN_SLOT).sum() == n and torch.equal(labels == GEN_SLOT, ids == GEN_SLOT)
    assert (labels != IGNORE_INDEX).sum() == n
    filled_ids, filled_labels = um.fill_generation_slots(batch["input_ids"], batch["labels"],
                                                         batch["gen_pixel_values"])
    codes = um.vqrae.tokenize(img[None]).flatten() + um.config.code_offset
    assert torch.equal(filled_labels[0][filled_labels[0] != IGNORE_INDEX], codes)
    boi = int(torch.nonzero(filled_ids[0] == um.config.boi_token_id)[0])
    assert torch.equal(filled_ids[0, boi + 1 : boi + 1 + n], codes)
    assert int(filled_ids[0, boi + 1 + n]) == um.config.eoi_token_id
    # Pre-tokenized codes give the same sequence.
    pre = coll([{"caption": "a red circle", "codes": (codes - um.config.code_offset).tolist()}])
    assert torch.equal(pre["input_ids"], filled_ids) and torch.equal(pre["labels"], filled_labels)


@pytest.mark.parametrize("mode", ["empty", "pad", "learned"])
def test_caption_dropout_uses_the_samplers_unconditional_prompt(um, mode):
    um.config.uncond = mode
    try:
        proc = um.processor
        cond, uncond = proc.t2i_prompt_ids("a red circle"), proc.t2i_prompt_ids("a red circle", uncond=True)
        assert cond != uncond and uncond[-1] == cond[-1] == um.config.boi_token_id
        if mode == "pad":
            assert len(uncond) == len(cond)
        if mode == "learned":
            assert um.config.uncond_token_id in uncond
        batch = UnifiedCollator(proc, caption_dropout=1.0)([{"caption": "a red circle", "codes": [0] * 16}])
        assert batch["input_ids"][0, : len(uncond)].tolist() == uncond
    finally:
        um.config.uncond = "empty"


def test_mixed_batch_loss_trains_projector_and_skips_bad_records(um, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    coll = UnifiedCollator(um.processor, max_length=200)
    records = [_vqa(1), {"caption": "a green triangle", "file_name": _images(1)[0]},
               {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]},
               {"caption": "a blue square", "image": str(bad)}, _vqa(2) | {"images": _images(1)}]
    batch = coll(records)
    assert coll.skipped == 2 and batch["input_ids"].shape[0] == 3
    um.train()
    um.set_trainable(projector=True, llm=False)  # the align stage
    um.train()  # a frozen VQRAE stays in eval mode (its outputs must match the cached / sampled ones)
    assert um.llm.training and um.projector.training and not um.vqrae.training
    try:
        out = um(**batch)
        out.loss.backward()
    finally:
        um.eval()
        um.set_trainable(projector=True, llm=True)
    assert torch.isfinite(out.loss)
    assert um.projector[0].weight.grad is not None and um.projector[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in um.llm.parameters()) and all(p.grad is None for p in um.vqrae.parameters())
    um.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="every record"):
        coll([{"caption": "x", "image": str(bad)}])


def test_collator_skips_invalid_records_and_raises_on_bugs(um, tmp_path, monkeypatch):
    from vqrae.data.records import InvalidRecord

    n = um.config.num_image_tokens
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    good = [{"caption": "a red circle", "codes": [0] * n},
            {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"},
                               {"from": "gpt", "value": "yes"}]}]  # LLaVA speakers, system included
    bad = [None, "a red circle", {}, {"caption": 3, "codes": [0] * n}, {"caption": "  ", "codes": [0] * n},
           {"caption": "x"}, {"caption": "x", "codes": ["a"] * n}, {"caption": "x", "codes": [[1, 2], [3]]},
           {"caption": "x", "codes": [0] * 3}, {"caption": "x", "codes": [10**6] * n},
           {"caption": "x", "image": str(tmp_path / "missing.png")}, {"caption": "x", "image": str(junk)},
           {"caption": "x", "image": torch.zeros(1, 4, 4)}, {"caption": "x", "image": 42},
           {"messages": "hi"}, {"messages": ["hi"]}, {"messages": [{"role": "bot", "content": "x"}]},
           {"messages": [{"role": "user", "content": 5}]}, {"conversations": "hi"},
           {"conversations": [{"from": "alien", "value": "x"}]}, {"conversations": [["human", "x"]]},
           _vqa(1) | {"images": _images(1)[0]}, _vqa(2) | {"images": _images(1)}]
    coll = UnifiedCollator(um.processor)
    batch = coll(good + bad)
    assert coll.skipped == len(bad) and batch["input_ids"].shape[0] == len(good)
    for rec in bad:
        with pytest.raises(InvalidRecord):
            coll.encode_record(rec)
    with pytest.raises(ValueError, match="every record"):
        coll(bad)
    # A bug (in the processor, say) is not a bad record: it propagates instead of being skipped.
    for method, exc in (("t2i_prompt_ids", KeyError), ("encode_conversation", TypeError),
                        ("image_tensor", AttributeError), ("count_images", RuntimeError)):
        def bug(*args, exc=exc, **kwargs):
            raise exc("a bug")

        monkeypatch.setattr(um.processor, method, bug)
        with pytest.raises(exc, match="a bug"):
            coll(good + [_vqa(1), {"caption": "a blue square", "image": _images(1)[0]}])
        monkeypatch.undo()


def test_templates_render_and_plain_template_ends_with_eos():
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert get_template("chatml").render(msgs) == ("<|im_start|>user\nq<|im_end|>\n"
                                                   "<|im_start|>assistant\na<|im_end|>\n")
    segs = get_template("plain").segments(msgs, eos="</s>")
    assert segs == [("USER: q\nASSISTANT: ", False), ("a</s>", True), ("\n", False)]
    with pytest.raises(ValueError, match="role"):
        get_template("plain").segments([{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="unknown conversation template"):
        get_template("vicuna-from-name-guessing")
    plain = tiny_unified_model(seed=1, template="plain")
    batch = UnifiedCollator(plain.processor)([{"messages": msgs}])
    labels = batch["labels"][0]
    assert plain.text_tokenizer.decode(labels[labels != IGNORE_INDEX]) == "a</s>"
    assert json.loads(plain.config.to_json_string())["template"] == "plain"


def test_max_length_never_cuts_an_image(um):
    """A text-to-image record with pre-tokenized codes longer than max_length is skipped, not cut mid-image; a text
    record is cut; a record whose image fits whole is kept."""
    n = um.config.num_image_tokens
    codes = {"caption": "a red circle", "codes": list(range(n))}
    full = len(UnifiedCollator(um.processor).encode_record(codes)[0])
    cut = UnifiedCollator(um.processor, max_length=full - 3)  # inside <eoi> + the turn end, or inside the codes
    with pytest.raises(ValueError, match="every record"):
        cut([codes])
    assert cut.skipped == 1
    inside = UnifiedCollator(um.processor, max_length=full - n // 2)
    with pytest.raises(ValueError, match="every record"):
        inside([codes])
    text = {"messages": [{"role": "user", "content": "hi " * 50}, {"role": "assistant", "content": "yes"}]}
    batch = UnifiedCollator(um.processor, max_length=full - 3)([codes | {"codes": list(range(n))}, text])
    assert batch["input_ids"].shape == (1, full - 3)  # the text record, cut; the image record skipped
    assert UnifiedCollator(um.processor, max_length=full)([codes])["input_ids"].shape == (1, full)


def test_save_pretrained_writes_the_given_state_dict(um, tmp_path):
    """Stage.export hands gathered (e.g. ZeRO-3) weights to save_pretrained(state_dict=...): those are written."""
    state = {k: v.clone() for k, v in um.state_dict().items()}
    state["projector.0.bias"] = torch.full_like(state["projector.0.bias"], 0.5)
    um.save_pretrained(tmp_path / "m", state_dict=state)
    loaded = UnifiedModel.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.projector[0].bias, torch.full_like(loaded.projector[0].bias, 0.5))
    assert not torch.equal(um.projector[0].bias, loaded.projector[0].bias)
    assert (tmp_path / "m" / "sampling_config.json").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()


def test_reader_items_feed_the_collator_for_every_task(um):
    """ShapesWorld reader items (pixels + caption + conversations) go straight into the collator: by default as the
    conversation they hold, with task="t2i" as a text-to-image pair, with task="describe" as an alignment record
    (the image answered with its caption)."""
    from vqrae.data.readers import ShapesDataset
    from vqrae.data.shapes import ShapesConfig

    items = [ShapesDataset(3, ShapesConfig(size=32), seed=0, split="train")[i] for i in range(3)]
    assert all(isinstance(it["pixels"], torch.Tensor) and it["caption"] and it["conversations"] for it in items)
    coll = UnifiedCollator(um.processor)
    n = um.config.num_image_features
    conv = coll(items)
    assert coll.skipped == 0 and conv["pixel_values"].shape[0] == 3 and "gen_pixel_values" not in conv
    assert torch.equal(conv["pixel_values"][0], items[0]["pixels"])
    assert int((conv["input_ids"] == um.config.image_token_id).sum()) == 3 * n
    t2i = coll([it | {"task": "t2i"} for it in items])
    assert t2i["gen_pixel_values"].shape[0] == 3 and "pixel_values" not in t2i
    described = coll([it | {"task": "describe"} for it in items])
    assert described["pixel_values"].shape[0] == 3
    labels = described["labels"][0]
    answer = um.text_tokenizer.decode(labels[labels != IGNORE_INDEX], skip_special_tokens=True)
    assert answer.strip() == items[0]["caption"]
    with pytest.raises(ValueError, match="every record"):
        coll([{"task": "paint", "caption": "x", "pixels": items[0]["pixels"]}])


def test_vicuna_v1_template_renders_llava_conversations():
    """LLaVA-1.5's conv_vicuna_v1: system line, "USER: ... ASSISTANT: ...</s>", and <s> once at the start."""
    t = get_template("vicuna_v1")
    text = t.render([{"role": "user", "content": "<image>\nWhat colour?"}, {"role": "assistant", "content": "Red."},
                     {"role": "user", "content": "Shape?"}], add_generation_prompt=True, eos="</s>")
    assert text == ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the human's questions. USER: <image>\nWhat colour? "
                    "ASSISTANT: Red.</s>USER: Shape? ASSISTANT: ")
    assert t.add_bos and t.stop_string("</s>") == "</s>"
