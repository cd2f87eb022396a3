"""`vqrae train lm-pretrain`: a from-scratch causal LM on ShapesWorld text, exported as an ordinary Hugging Face
folder (model, tokenizer, chat template) that later stages take as `llm=PATH` like any downloaded LLM."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import vqrae
from vqrae.cli.cli import main
from vqrae.tokenizer.testing import tiny_vqrae_config
from vqrae.train.metrics import read_metrics
from vqrae.unified_model.templates import get_template


def _train_toy_lm(out, records: int, *overrides: str) -> None:
    """One step of a width-32, one-layer LM on `records` ShapesWorld records: enough for its tokenizer and export."""
    assert main(["train", "lm-pretrain", "--config", "shapes-tiny/lm-pretrain", f"output_dir={out}",
                 f"data_num={records}", f"val_num={records // 5}", "hidden_size=32", "num_layers=1", "num_heads=2",
                 "num_kv_heads=1", "intermediate_size=64", "max_length=64", "vocab_size=400",
                 f"tokenizer_corpus={records}", "max_steps=1", "batch_size=2", "eval_every=0", "save_every=0",
                 *overrides]) == 0


def test_lm_pretrain_exports_a_plain_causal_lm_with_its_chat_template(tmp_path):
    out = tmp_path / "lm"
    assert main(["train", "lm-pretrain", "--config", "shapes-tiny/lm-pretrain", f"output_dir={out}", "data_num=200",
                 "val_num=20", "hidden_size=64", "num_layers=2", "num_heads=4", "num_kv_heads=2",
                 "intermediate_size=128", "max_length=64", "vocab_size=400", "tokenizer_corpus=100", "max_steps=15",
                 "batch_size=8", "lr=3e-3", "warmup_steps=2", "log_every=5", "eval_every=0", "save_every=0"]) == 0
    final = out / "final"
    lm = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)  # a qwen2 folder: transformers picks Qwen2Tokenizer
    assert type(lm).__name__ == "Qwen2ForCausalLM" and lm.config.vocab_size == len(tok)
    # the same tokens and text whichever class loads it (Qwen2's pipeline, byte level: nothing is <unk>)
    plain = PreTrainedTokenizerFast.from_pretrained(final)
    text = "a red circle on the left\nHow many stars? 3 (zebra!)"
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids == plain(text, add_special_tokens=False).input_ids and tok.decode(ids) == text
    assert tok.unk_token_id not in ids
    # its chat template is our chatml template, so template="auto" gives chatml
    msgs = [{"role": "user", "content": "How many circles?"}, {"role": "assistant", "content": "2"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == get_template("chatml").render(msgs, eos=tok.eos_token)
    records = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0] - 1.0  # it learns
    evals = [r for r in records if "eval/perplexity" in r]
    assert evals and 1 < evals[-1]["eval/perplexity"] < len(tok)
    um = vqrae.UnifiedModel.from_llm(str(final), vqrae.VQRAE(tiny_vqrae_config()))
    assert um.config.template == "auto" and um.processor.template.render(msgs) == get_template("chatml").render(msgs)
    assert isinstance(um.chat([msgs[0]], max_new_tokens=3), str)


def test_scene_context_puts_the_fullest_caption_where_the_image_was():
    """`scene_context: caption`: the conversation document reads the scene's description (every object's colour
    and shape) before the first question, so its answers can be read off the context; `none` leaves the image out."""
    import pytest

    from vqrae.data.readers import ShapesDataset
    from vqrae.data.shapes import ShapesConfig
    from vqrae.train.stages.lm_pretrain import LMPretrainConfig, documents


    item = ShapesDataset(1, ShapesConfig(size=32), seed=0, split="train", size=32)[0]
    record = item["record"]
    fullest = max(record["captions"], key=len)
    text = lambda segments: "".join(t for t, _ in segments)
    with_scene = text(documents(item, "<eos>", "caption")[-1])
    without = text(documents(item, "<eos>", "none")[-1])
    assert with_scene.startswith(f"<|im_start|>user\n{fullest}\n") and fullest not in without
    assert all(o["color"] in with_scene.split("\n")[1] for o in record["objects"])
    assert "<image>" not in with_scene and with_scene.replace(f"{fullest}\n", "", 1) == without
    with pytest.raises(ValueError, match="scene_context"):
        LMPretrainConfig(output_dir="x", scene_context="image")


def test_caption_attributes_names_each_colour_after_its_shape():
    """`scene_context: caption+attributes`: the fullest caption, then "colors: <shape> <colour>" for every object, so
    a colour question is answered by copying the word after the shape; lm_lookup describes scenes the same way."""
    from vqrae.data.readers import ShapesDataset
    from vqrae.data.shapes import ShapesConfig
    from vqrae.eval.lm_lookup import lookup_prompts
    from vqrae.train.stages.lm_pretrain import LMPretrainConfig, documents

    item = ShapesDataset(3, ShapesConfig(size=32), seed=0, split="train", size=32)[2]
    objects, fullest = item["record"]["objects"], max(item["record"]["captions"], key=len)
    scene = "".join(t for t, _ in documents(item, "<eos>", "caption+attributes", turns_per_document=1)[-1])
    scene = scene.split("\n")[1]
    assert scene.startswith(f"{fullest}; colors: ") and len(objects) >= 2
    listing = scene[len(fullest) + len("; colors: "):].split(" and ")
    assert listing[-1] == f"{objects[-1]['class']} {objects[-1]['color']}"
    assert all(f"{o['class']} {o['color']}" in scene for o in objects)
    plain = lookup_prompts(2, scene_context="caption")[0]["messages"][0]["content"]
    listed = lookup_prompts(2, scene_context="caption+attributes")[0]["messages"][0]["content"]
    first, rest = plain.split("\n", 1)
    assert listed.startswith(f"{first}; colors: ") and listed.endswith(rest)
    assert LMPretrainConfig(output_dir="x", scene_context="caption+attributes").scene_context == "caption+attributes"


def test_loss_on_answers_scores_captions_and_replies_only(tmp_path):
    """`loss_on: answers`: in a conversation only the assistant's replies (and their end marker) are targets; the
    questions and the chat markers are context. Captions stay targets throughout; `all` scores every token."""
    import pytest

    from vqrae.data.readers import ShapesDataset
    from vqrae.data.shapes import ShapesConfig
    from vqrae.train.stages.lm_pretrain import LMPretrainConfig, PackedText

    out = tmp_path / "lm"
    _train_toy_lm(out, 40, "loss_on=answers")
    tok = AutoTokenizer.from_pretrained(out / "final")
    items = ShapesDataset(4, ShapesConfig(size=32), seed=0, split="train", size=32)
    answers = PackedText(items, tok, 1024, "caption", "answers")  # one block: record 0 whole
    every = PackedText(items, tok, 1024, "caption", "all")
    assert torch.equal(answers.blocks, every.blocks) and bool(every.scored.all())
    scored = tok.decode(answers.blocks[0][answers.scored[0]])
    context = tok.decode(answers.blocks[0][~answers.scored[0]])
    record = items[0]["record"]
    replies = [t["value"] for t in record["conversations"] if t["from"] == "gpt"]
    assert record["captions"][0] in scored and all(r in scored for r in replies)
    assert "<|im_end|>" in scored and "<|im_start|>" not in scored and "assistant" not in scored
    question = record["conversations"][0]["value"].split("\n")[-1]
    assert question in context and question not in scored
    with pytest.raises(ValueError, match="loss_on"):
        LMPretrainConfig(output_dir="x", loss_on="questions")


def test_lm_lookup_asks_each_question_after_the_scene_and_scores_exact_answers(tmp_path):
    """eval.lm_lookup: the question follows the scene's fullest caption (or nothing, for the prior); a reply is
    right only when it is the answer; an LM folder is read end to end."""
    from vqrae.eval.lm_lookup import lm_lookup, lookup_prompts, score

    prompts = lookup_prompts(3)
    bare = lookup_prompts(3, scene=False)
    assert len(prompts) == len(bare) > 3 and {p["type"] for p in prompts} <= {"count", "color", "shape", "exist",
                                                                               "position"}
    first = prompts[0]["messages"][0]["content"]
    assert first.endswith(bare[0]["messages"][0]["content"]) and len(first) > len(bare[0]["messages"][0]["content"])
    right = score([p["answer"].upper() + "." for p in prompts], prompts)
    assert right["overall"] == 1.0
    from vqrae.eval.lm_lookup import _until_special

    # a reply ends at the first special token (the end of turn), not where `generate` stopped
    assert _until_special([11, 12, 3, 12, 40], {3, 4}) == [11, 12] and _until_special([11], {3}) == [11]
    wrong = score(["zebra"] * len(prompts), prompts)
    assert wrong["overall"] == 0.0 and set(wrong) == set(right)
    out = tmp_path / "lm"
    _train_toy_lm(out, 20)
    measured = lm_lookup(str(out / "final"), num_scenes=2, max_new_tokens=2)
    assert set(measured) >= {"overall"} and all(0 <= v <= 1 for v in measured.values())


def test_turns_per_document_asks_each_question_after_the_scene(tmp_path):
    """`turns_per_document: 1`: every question-answer pair of a conversation is a document of its own that opens
    with the scene's description (as VQA evaluation asks one question about an image); 0 keeps the conversation
    whole. The BPE learns the chat template's role names, so a turn's header is one token, not one per letter."""
    import pytest

    from vqrae.data.readers import ShapesDataset
    from vqrae.data.shapes import ShapesConfig
    from vqrae.train.stages.lm_pretrain import LMPretrainConfig, documents

    item = ShapesDataset(1, ShapesConfig(size=32), seed=0, split="train", size=32)[0]
    record = item["record"]
    fullest = max(record["captions"], key=len)
    text = lambda segments: "".join(t for t, _ in segments)
    n_captions = len(record["captions"])
    whole = documents(item, "<eos>", "caption")[n_captions:]
    single = documents(item, "<eos>", "caption", turns_per_document=1)[n_captions:]
    pairs = [t for t in record["conversations"] if t["from"] == "gpt"]
    assert len(whole) == 1 and len(single) == len(pairs) > 2
    for doc, reply in zip(single, pairs, strict=True):
        assert text(doc).startswith(f"<|im_start|>user\n{fullest}\n") and text(doc).count("<|im_start|>user") == 1
        assert [t for t, answer in doc if answer] == [f"{reply['value']}<|im_end|>"]
    assert text(single[0]) in text(whole[0]) and text(single[1]) not in text(whole[0])  # the scene again
    assert len(documents(item, "<eos>", "caption", turns_per_document=2)[n_captions:]) == (len(pairs) + 1) // 2
    with pytest.raises(ValueError, match="turns_per_document"):
        LMPretrainConfig(output_dir="x", turns_per_document=-1)

    out = tmp_path / "lm"
    _train_toy_lm(out, 40, "turns_per_document=1")
    tok = AutoTokenizer.from_pretrained(out / "final")
    header = tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True, tokenize=False)
    assert tok.tokenize(header)[-2:] == ["assistant", "Ċ"] and "user" in tok.tokenize(header)


def test_document_mask_keeps_each_packed_document_to_itself(tmp_path):
    """Packed blocks hold several documents; with `document_mask` (the default) a document's logits are those it
    has alone, its positions counted from 0, so a question never reads an earlier scene's caption. Without it the
    later documents read across."""
    from vqrae.data.readers import ShapesDataset
    from vqrae.data.shapes import ShapesConfig
    from vqrae.train.stages.lm_pretrain import LMPretrainConfig, LMPretrainStage, PackedText

    out = tmp_path / "lm"
    _train_toy_lm(out, 40)
    tok = AutoTokenizer.from_pretrained(out / "final")
    lm = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    items = ShapesDataset(2, ShapesConfig(size=32), seed=0, split="train", size=32)
    packed = PackedText(items, tok, 256, "caption", "answers")
    ids, positions = packed.blocks[0], packed.positions[0]
    starts = (positions == 0).nonzero().flatten().tolist()
    assert starts[0] == 0 and len(starts) >= 3  # several documents in the block
    a, b = starts[2], (starts[3] if len(starts) > 3 else len(ids))  # the third document, alone
    eos = ids[a - 1].item()
    assert eos == tok.eos_token_id and positions[a:b].tolist() == list(range(b - a))

    def batch(document_mask: bool) -> dict:
        stage = LMPretrainStage.__new__(LMPretrainStage)
        stage.config = LMPretrainConfig(output_dir=str(out), document_mask=document_mask)
        return stage.collate([packed[0]])

    with torch.no_grad():
        alone = lm(input_ids=ids[None, a:b]).logits[0]
        masked = LMPretrainStage._forward(lm, batch(True)).logits[0, a:b]
        stream = LMPretrainStage._forward(lm, batch(False)).logits[0, a:b]
    assert torch.allclose(masked, alone, atol=1e-4)
    assert not torch.allclose(stream, alone, atol=1e-2)
