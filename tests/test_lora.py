"""LoRA fine-tuning of the unified model (unified_model/lora.py, `vqrae export merge-lora`): what trains, that an
optimizer step moves only that, and that adapters merge, save, load and export to the same logits."""

from __future__ import annotations

import argparse

import pytest
import torch
from tokenizers import AddedToken
from transformers import Qwen2Config, Qwen2ForCausalLM

from vqrae.cli import cli, export
from vqrae.tokenizer import VQRAE
from vqrae.tokenizer.testing import tiny_vqrae_config
from vqrae.unified_model import UnifiedModel
from vqrae.unified_model.lora import (
    ADAPTER_DIR,
    BASE_DIR,
    LoraSettings,
    add_lora,
    is_lora,
    load_lora,
    merge_lora,
    new_token_ids,
    save_lora,
)
from vqrae.unified_model.testing import tiny_llm, tiny_text_tokenizer, tiny_unified_model

# peft reads a transformers property that transformers 5 deprecates; nothing this project can change.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

# Tiny Qwen2: 2 layers, each with the 7 default target projections, an A and a B matrix per adapter.
LORA_MATRICES = 2 * 7 * 2
SETTINGS = LoraSettings(r=4, alpha=8, dropout=0.0)


def tied_model() -> UnifiedModel:
    """Like tiny_unified_model, but the LLM's output head is its input table (Qwen2.5-0.5B / Qwen3-0.6B style)."""
    torch.manual_seed(0)
    tok = tiny_text_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    return UnifiedModel.from_components(Qwen2ForCausalLM(config).eval(), tok, VQRAE(tiny_vqrae_config()).eval(),
                                        template="chatml").eval()


def batch(model: UnifiedModel) -> dict[str, torch.Tensor]:
    """An understanding turn (an image) followed by a drawn image (<boi> codes <eoi>): text, specials and codes."""
    c = model.config
    ids, _ = model.processor.encode_conversation(
        [{"role": "user", "content": "<image>\nwhat colour is the circle?"}, {"role": "assistant", "content": "red"}])
    codes = torch.randint(0, c.codebook_size, (c.num_image_tokens,), generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[*ids, c.boi_token_id, *(codes + c.code_offset).tolist(), c.eoi_token_id]])
    pixels = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "pixel_values": pixels}


def logits(model: UnifiedModel, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def perturb(model: UnifiedModel) -> None:
    """Move every trainable LLM tensor (as training would): LoRA B starts at zero, so a fresh adapter is a no-op."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# ----- settings and vocabulary -----
@pytest.mark.parametrize("kwargs, key", [
    ({"r": -1}, "lora.r"), ({"r": 2.5}, "lora.r"), ({"alpha": 0}, "lora.alpha"), ({"dropout": 1.0}, "lora.dropout"),
    ({"dropout": -0.1}, "lora.dropout"), ({"target_modules": []}, "lora.target_modules"),
    ({"target_modules": "q_proj"}, "lora.target_modules"), ({"target_modules": ["q_proj", ""]}, "lora.target_modules"),
])
def test_settings_reject_bad_values_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=f"^{key}: ") as info:
        LoraSettings(**kwargs)
    assert "\n" not in str(info.value)


def test_r_zero_is_off_and_bad_targets_name_the_module():
    model = tiny_unified_model()
    assert not LoraSettings().enabled and add_lora(model, LoraSettings()) is model and not is_lora(model)
    with pytest.raises(ValueError, match="lora.target_modules: .*'c_attn'"):
        add_lora(model, LoraSettings(r=4, target_modules=["q_proj", "c_attn"]))
    assert not is_lora(model)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_lora(model)
    add_lora(model, SETTINGS)
    with pytest.raises(ValueError, match="already carries LoRA"):
        add_lora(model, SETTINGS)


def test_new_token_ids_are_the_added_specials_and_the_codes():
    model = tiny_unified_model()
    c = model.config
    before = len(tiny_text_tokenizer())  # the text tokenizer as it was before the vocabulary was extended
    assert new_token_ids(model) == [*range(before, len(model.text_tokenizer)), *range(*c.code_range)]
    for special in (c.image_token_id, c.boi_token_id, c.eoi_token_id, c.uncond_token_id, c.pad_token_id):
        assert special in new_token_ids(model)
    assert len(model.text_tokenizer) - before >= 7  # <image> <boi> <eoi> <uncond>, chatml's two, <pad>


def test_new_token_ids_leave_out_specials_the_tokenizer_already_had():
    """A Qwen-like tokenizer: the chat markers and the pad exist (with pretrained rows) before the extension."""
    tok = tiny_text_tokenizer()
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")],
                   special_tokens=True)
    tok.add_special_tokens({"pad_token": "<|endoftext|>"})
    own = [tok.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")]
    before = len(tok)
    model = UnifiedModel.from_components(tiny_llm(before), tok, VQRAE(tiny_vqrae_config()).eval(), template="chatml")
    c = model.config
    assert c.pad_token_id == own[2]
    ids = new_token_ids(model)
    assert ids == [*range(before, before + 4), *range(*c.code_range)]  # <image> <boi> <eoi> <uncond>, codes
    assert not set(own) & set(ids)


# ----- what trains -----
@pytest.mark.parametrize("projector", [True, False])
def test_only_adapters_and_new_rows_train_projector_as_set(projector):
    model = tiny_unified_model()
    model.set_trainable(projector=projector, llm=True)
    add_lora(model, SETTINGS)
    names = trainable(model)
    rows, hidden = len(new_token_ids(model)), model.config.hidden_size
    lora = [n for n in names if ".lora_A." in n or ".lora_B." in n]
    tokens = {n: p for n, p in names.items() if "trainable_tokens_delta" in n}
    assert len(lora) == LORA_MATRICES
    assert sorted(n.split(".token_adapter")[0].rsplit(".", 1)[-1] for n in tokens) == ["embed_tokens", "lm_head"]
    assert all(p.shape == (rows, hidden) for p in tokens.values())
    assert {n for n in names if n.startswith("llm.")} == {*lora, *tokens}  # nothing else in the LLM
    assert all(p.requires_grad == projector for p in model.projector.parameters())
    assert not any(p.requires_grad for p in model.vqrae.parameters())


def test_tied_tables_share_one_trainable_row_set():
    model = add_lora(tied_model(), SETTINGS)
    tokens = [n for n in trainable(model) if "trainable_tokens_delta" in n]
    assert len(tokens) == 1 and "embed_tokens" in tokens[0]


def test_optimizer_step_moves_only_adapters_and_new_rows():
    model = tiny_unified_model()
    model.set_trainable(projector=False, llm=False)
    add_lora(model, SETTINGS)
    model.train()
    llm = model.llm
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    tables = {"emb": llm.get_input_embeddings(), "head": llm.get_output_embeddings()}
    before = {k: t.weight.detach().clone() for k, t in tables.items()}  # base rows with the token rows swapped in
    lora_before = {n: p.detach().clone() for n, p in trainable(model).items()}

    inputs = batch(model)
    out = model(**inputs, labels=inputs["input_ids"])
    assert torch.isfinite(out.loss)
    optimizer = torch.optim.Adam(trainable(model).values(), lr=1e-2)
    out.loss.backward()
    optimizer.step()

    for name, value in frozen.items():
        assert torch.equal(value, dict(model.named_parameters())[name]), name
    assert all(not torch.equal(lora_before[n], p) for n, p in trainable(model).items() if ".lora_B." in n)
    c, new = model.config, torch.tensor(new_token_ids(model))
    old = torch.ones(before["emb"].shape[0], dtype=torch.bool)
    old[new] = False
    for key, table in tables.items():
        after = table.weight.detach()
        assert torch.equal(after[old], before[key][old]), f"{key}: a text row moved"
        changed = (after[new] != before[key][new]).any(-1)
        assert changed.any(), f"{key}: no new row moved"
    # Every code row is a softmax output, so every one of them gets a gradient in the head.
    head_changed = (tables["head"].weight.detach() != before["head"]).any(-1)
    assert head_changed[c.code_offset : c.code_offset + c.codebook_size].all()


# ----- the wrapped model runs -----
def test_wrapped_model_forward_generate_and_chat():
    model = tiny_unified_model()
    inputs = batch(model)
    ref = logits(model, inputs)
    add_lora(model, SETTINGS)
    assert torch.allclose(logits(model, inputs), ref, atol=1e-6)  # fresh adapters (B = 0) change nothing
    perturb(model)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    assert torch.isfinite(loss) and not torch.allclose(logits(model, inputs), ref, atol=1e-3)
    images = model.generate_images(["a red circle"], num_images=2, seed=0, batch_size=2)
    c = model.config
    assert images.codes.shape[-2:] == tuple(c.grid_size)
    assert 0 <= int(images.codes.min()) and int(images.codes.max()) < c.codebook_size
    assert isinstance(model.chat([{"role": "user", "content": "what colour is the square?"}], max_new_tokens=3), str)


# ----- merge, save, load, export -----
@pytest.mark.parametrize("build", [tiny_unified_model, tied_model], ids=["untied", "tied"])
def test_merged_model_gives_the_adapter_models_logits(build, tmp_path):
    model = add_lora(build(), SETTINGS)
    perturb(model)
    inputs = batch(model)
    ref = logits(model, inputs)
    merge_lora(model)
    assert not is_lora(model) and type(model.llm) is Qwen2ForCausalLM
    assert torch.allclose(logits(model, inputs), ref, atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = UnifiedModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.allclose(logits(loaded, inputs), ref, atol=1e-5)


def test_save_lora_load_lora_round_trip(tmp_path):
    model = tiny_unified_model()
    inputs = batch(model)
    base_logits = logits(model, inputs)
    add_lora(model, SETTINGS)
    perturb(model)
    ref = logits(model, inputs)
    save_lora(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / ADAPTER_DIR / "adapter_config.json").is_file()
    # base/ is a plain model folder holding the untouched base weights.
    base = UnifiedModel.from_pretrained(tmp_path / "ckpt" / BASE_DIR, dtype=torch.float32)
    assert not is_lora(base) and torch.allclose(logits(base, inputs), base_logits, atol=1e-6)

    loaded = load_lora(tmp_path / "ckpt", dtype=torch.float32)
    assert is_lora(loaded) and not any(p.requires_grad for p in loaded.llm.parameters())
    assert torch.allclose(logits(loaded, inputs), ref, atol=1e-6)
    resumed = load_lora(tmp_path / "ckpt", trainable=True, dtype=torch.float32)
    llm_trainable = lambda m: {n for n in trainable(m) if n.startswith("llm.")}
    assert llm_trainable(resumed) == llm_trainable(model)
    # A training engine's full state dict (e.g. gathered under ZeRO-3) saves the same checkpoint.
    save_lora(model, tmp_path / "from_sd", state_dict={k: v.clone() for k, v in model.state_dict().items()})
    assert torch.allclose(logits(load_lora(tmp_path / "from_sd", dtype=torch.float32), inputs), ref, atol=1e-6)


def run_cli(args: list[str], monkeypatch) -> int:
    assert "export" in cli.COMMANDS
    return cli.main(args)


def test_merge_lora_cli_round_trip(tmp_path, monkeypatch, capsys):
    model = add_lora(tiny_unified_model(), SETTINGS)
    perturb(model)
    inputs = batch(model)
    ref = logits(model, inputs)
    save_lora(model, tmp_path / "ckpt")
    out = tmp_path / "merged"
    assert run_cli(["export", "merge-lora", "--model", str(tmp_path / "ckpt"), "--out", str(out)], monkeypatch) == 0
    assert "merged" in capsys.readouterr().out
    assert not (out / ADAPTER_DIR).exists() and not list(tmp_path.glob(".merged.tmp-*"))
    loaded = UnifiedModel.from_pretrained(out, dtype=torch.float32)
    assert not is_lora(loaded) and torch.allclose(logits(loaded, inputs), ref, atol=1e-5)
    # The export refuses to write over a folder that holds something.
    assert run_cli(["export", "merge-lora", "--model", str(tmp_path / "ckpt"), "--out", str(out)], monkeypatch) == 2
    assert "--out" in capsys.readouterr().err


def test_merge_lora_bad_input_one_line(tmp_path, monkeypatch, capsys):
    plain = tmp_path / "plain"
    tiny_unified_model().save_pretrained(plain)
    cases = [(tmp_path / "missing", FileNotFoundError, "not found"), (plain, ValueError, "not a LoRA checkpoint")]
    for folder, error, match in cases:
        with pytest.raises(error, match=match):
            load_lora(folder)
        code = run_cli(["export", "merge-lora", "--model", str(folder), "--out", str(tmp_path / "o")], monkeypatch)
        err = capsys.readouterr().err
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_export_registers_its_subcommand():
    parser = argparse.ArgumentParser()
    export.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "merge-lora", "--model", "a", "--out", "b"])
    assert args.func is export.run_merge_lora and (args.model, args.out) == ("a", "b")
