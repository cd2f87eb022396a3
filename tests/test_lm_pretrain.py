"""`vqrae train lm-pretrain`: a from-scratch causal LM on ShapesWorld text, exported as an ordinary Hugging Face
folder (model, tokenizer, chat template) that later stages take as `llm=PATH` like any downloaded LLM."""

from __future__ import annotations

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import vqrae
from vqrae.cli.cli import main
from vqrae.tokenizer.testing import tiny_vqrae_config
from vqrae.train.metrics import read_metrics
from vqrae.unified_model.templates import get_template


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


    class Template:
        def apply_chat_template(self, messages, tokenize=False):
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    item = ShapesDataset(1, ShapesConfig(size=32), seed=0, split="train", size=32)[0]
    record = item["record"]
    fullest = max(record["captions"], key=len)
    with_scene = documents(item, Template(), "caption")[-1]
    without = documents(item, Template(), "none")[-1]
    assert with_scene.startswith(f"user: {fullest}\n") and fullest not in without
    assert all(o["color"] in with_scene.split("\n")[0] for o in record["objects"])
    assert "<image>" not in with_scene and with_scene.replace(f"{fullest}\n", "", 1) == without
    with pytest.raises(ValueError, match="scene_context"):
        LMPretrainConfig(output_dir="x", scene_context="image")
