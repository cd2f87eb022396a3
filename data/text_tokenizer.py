"""A BPE text tokenizer trained on a corpus, as a Hugging Face fast tokenizer.

Used by ShapesWorld's from-scratch models: the stage-0 SigLIP text tower and, later, the from-scratch LLM. It is a
SentencePiece-style BPE (a `▁` marks word starts, so decoding restores the spaces) trained with the `tokenizers`
library itself: no `sentencepiece` model and no protobuf conversion in between. (Converting a SentencePiece model
needs protobuf >= 7 with sentencepiece 0.2.3, which lmms-eval's pinned wandb forbids; the `eval` extra would break
stage 0.) The folder holds an ordinary `tokenizer.json` that `AutoTokenizer.from_pretrained` reads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

SPECIALS = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}


def train_text_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1000,
                         extra_special_tokens: tuple[str, ...] = ("<image>",)):
    """Train a BPE tokenizer on `texts`, save it as a Hugging Face tokenizer in `out_dir`, return it.

    Ids: 0 <pad>, 1 <unk>, 2 <s>, 3 </s>, then `extra_special_tokens` (never split), then the learned pieces.
    `vocab_size` is an upper bound: a small corpus yields fewer pieces rather than an error. No BOS/EOS is added
    when encoding (ask for them explicitly), as with the SentencePiece models this replaces.
    """
    from tokenizers import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("cannot train a text tokenizer on an empty corpus")
    specials = [SPECIALS["pad"], SPECIALS["unk"], SPECIALS["bos"], SPECIALS["eos"], *extra_special_tokens]
    bpe = SentencePieceBPETokenizer(unk_token=SPECIALS["unk"])
    # Every printable ASCII character and the newline are pieces even when the corpus lacks them (chat templates
    # put newlines between turns), so such text never turns into <unk>.
    alphabet = [chr(c) for c in range(32, 127)] + ["\n"]
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
                            show_progress=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, pad_token=SPECIALS["pad"], unk_token=SPECIALS["unk"],
        bos_token=SPECIALS["bos"], eos_token=SPECIALS["eos"],
        additional_special_tokens=list(extra_special_tokens),
    )
    tok.save_pretrained(str(out_dir))
    logger.info("text tokenizer: %d tokens, saved to %s", len(tok), out_dir)
    return tok
