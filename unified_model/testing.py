"""Tiny unified models for tests, benchmarks and CPU smoke runs: built offline in about a second.

The text tokenizer is a byte-level BPE trained on a few ShapesWorld-like sentences (nothing Qwen-specific); the
LLM is a random Qwen2 of the given size; the VQRAE comes from `tokenizer.testing.tiny_vqrae_config`.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from vqrae.tokenizer import VQRAE
from vqrae.tokenizer.testing import tiny_vqrae_config

from .modeling import UnifiedModel

CORPUS = [
    "a red circle on the left of a blue square",
    "a green triangle above a yellow circle",
    "what colour is the square? blue",
    "how many shapes are there? two",
    "is the circle left of the triangle? yes",
    "generate an image of a purple star below an orange square",
]


def tiny_text_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE with <unk>, <s>, </s> and no pad token (the vocab extension adds one)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_llm(vocab_size: int, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4,
             intermediate_size: int | None = None) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=2048, tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config).eval()


def tiny_unified_model(seed: int = 0, template: str = "chatml", image_size: int = 32,
                       vqrae_overrides: dict | None = None, llm_kwargs: dict | None = None, **kwargs) -> UnifiedModel:
    """A random unified model: tiny BPE + tiny Qwen2 + tiny VQRAE (patch 8: 32 px is a 4x4 grid; 64 codes by
    default). `kwargs` go to `UnifiedModel.from_components` (template options, projector, code init, ...)."""
    torch.manual_seed(seed)
    tok = tiny_text_tokenizer()
    llm = tiny_llm(len(tok), **(llm_kwargs or {}))
    overrides = dict(vqrae_overrides or {})
    if image_size != 32:
        encoder = dict(tiny_vqrae_config().encoder_config, image_size=image_size)
        overrides = {"encoder_config": encoder, "image_size": image_size, **overrides}
    vq = VQRAE(tiny_vqrae_config(**overrides)).eval()
    return UnifiedModel.from_components(llm, tok, vq, template=template, **kwargs).eval()


def save_tiny_parts(folder) -> tuple:
    """What a unified stage builds from, saved as folders: FOLDER/llm (a tiny Qwen2 and its BPE tokenizer with a
    chatml chat template, as `lm-pretrain` exports) and FOLDER/vqrae (a tiny random VQRAE). Returns both paths."""
    from pathlib import Path

    from .templates import get_template

    folder = Path(folder)
    torch.manual_seed(0)
    tok = tiny_text_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = get_template("chatml").to_jinja()
    tiny_llm(len(tok)).save_pretrained(folder / "llm")
    tok.save_pretrained(folder / "llm")
    VQRAE(tiny_vqrae_config()).save_pretrained(folder / "vqrae")
    return folder / "llm", folder / "vqrae"
