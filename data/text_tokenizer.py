"""A BPE text tokenizer trained on a corpus, as a Hugging Face fast tokenizer.

Used by ShapesWorld's from-scratch models: the stage-0 SigLIP text tower and the from-scratch LLM (`lm-pretrain`).
Trained with the `tokenizers` library itself: no SentencePiece model and no protobuf conversion in between
(converting a SentencePiece model needs protobuf >= 7 with sentencepiece 0.2.3, which lmms-eval's pinned wandb
forbids, so the `eval` extra would break stage 0). Two pipelines:
- `"metaspace"` (stage 0): SentencePiece-style BPE, a `▁` marks word starts; every printable ASCII character and
  the newline are pieces, so such text never becomes `<unk>`. Few tokens per caption at a small vocabulary.
- `"qwen2"` (the LLM): exactly Qwen2's pipeline (NFC, Qwen2's split regex, byte-level BPE and decoding). transformers
  5 loads the tokenizer of a folder whose config.json says `qwen2` as `Qwen2Tokenizer`, which rebuilds that
  pipeline around whatever vocabulary and merges tokenizer.json holds; with Qwen2's own pipeline the tokenizer is the
  same whichever class loads it. Byte-level: nothing is ever `<unk>`.
The folder holds an ordinary `tokenizer.json` that `AutoTokenizer.from_pretrained` reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

SPECIALS = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}
# Qwen2's pre-tokenizer split (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX).
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def _metaspace_bpe(texts: list[str], vocab_size: int, specials: list[str]):
    from tokenizers import SentencePieceBPETokenizer

    bpe = SentencePieceBPETokenizer(unk_token=SPECIALS["unk"])
    alphabet = [chr(c) for c in range(32, 127)] + ["\n"]
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                            show_progress=False)
    return bpe._tokenizer


def _qwen2_bpe(texts: list[str], vocab_size: int, specials: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=max(vocab_size, 256 + len(specials)), special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    return bpe


def train_text_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1000,
                         extra_special_tokens: tuple[str, ...] = ("<image>",),
                         style: Literal["metaspace", "qwen2"] = "metaspace"):
    """Train a BPE tokenizer on `texts`, save it as a Hugging Face tokenizer in `out_dir`, return it.

    Ids: 0 <pad>, 1 <unk>, 2 <s>, 3 </s>, then `extra_special_tokens` (never split), then the learned pieces.
    `vocab_size` is an upper bound: a small corpus yields fewer pieces rather than an error. No BOS/EOS is added
    when encoding (ask for them explicitly).
    """
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("cannot train a text tokenizer on an empty corpus")
    specials = [SPECIALS["pad"], SPECIALS["unk"], SPECIALS["bos"], SPECIALS["eos"], *extra_special_tokens]
    builders = {"metaspace": _metaspace_bpe, "qwen2": _qwen2_bpe}
    if style not in builders:
        raise ValueError(f"tokenizer style must be one of {sorted(builders)}, got {style!r}")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=builders[style](texts, vocab_size, specials), pad_token=SPECIALS["pad"],
        unk_token=SPECIALS["unk"], bos_token=SPECIALS["bos"], eos_token=SPECIALS["eos"],
        additional_special_tokens=list(extra_special_tokens),
    )
    tok.save_pretrained(str(out_dir))
    logger.info("text tokenizer (%s): %d tokens, saved to %s", style, len(tok), out_dir)
    return tok
