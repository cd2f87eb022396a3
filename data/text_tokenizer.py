"""A SentencePiece text tokenizer trained on a corpus, wrapped as a Hugging Face tokenizer.

Used by ShapesWorld's from-scratch models: the stage-0 SigLIP text tower and, later, the from-scratch LLM. The
trained `tokenizer.model` is loaded through `LlamaTokenizer.from_pretrained(folder)`, which converts it to a fast
tokenizer (transformers 5 ignores `vocab_file=` on the constructor); the folder then holds an ordinary
`tokenizer.json` that `AutoTokenizer.from_pretrained` reads with nothing else.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

SPECIALS = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}


def train_text_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1000,
                         extra_special_tokens: tuple[str, ...] = ("<image>",)):
    """Train a BPE SentencePiece model on `texts`, save it as a Hugging Face tokenizer in `out_dir`, return it.

    Ids: 0 <pad>, 1 <unk>, 2 <s>, 3 </s>, then `extra_special_tokens` (never split), then the learned pieces.
    `vocab_size` is an upper bound: a small corpus yields fewer pieces rather than an error.
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("cannot train a text tokenizer on an empty corpus")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, pad_id=0, unk_id=1, bos_id=2, eos_id=3, hard_vocab_limit=False,
        user_defined_symbols=list(extra_special_tokens), minloglevel=2, num_threads=2,
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(model.getvalue())
        tok = LlamaTokenizer.from_pretrained(tmp)
    tok.pad_token = SPECIALS["pad"]
    if extra_special_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(extra_special_tokens)})
    tok.save_pretrained(str(out_dir))
    logger.info("text tokenizer: %d tokens, saved to %s", len(tok), out_dir)
    return tok
