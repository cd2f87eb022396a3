"""The image vocabulary: special tokens in the text tokenizer, K code rows in the LLM's embedding tables.

Layout of the extended vocabulary (ids):
    [0, len(tokenizer))                 text, plus the added specials <image> <boi> <eoi> <uncond> (<pad>)
    [len(tokenizer), code_offset)       unused rows some checkpoints carry (Qwen pads its tables); never sampled
    [code_offset, code_offset + K)      image codes: code k is id code_offset + k
Codes are not tokenizer entries: no text ever tokenizes to a code, the tokenizer file stays small, and a code id
is plain arithmetic. `<image>` is a placeholder whose embedding is always replaced by projected features.
"""

from __future__ import annotations

import logging

import torch
from tokenizers import AddedToken
from torch import nn

from vqrae.data.records import (
    IMAGE_TOKEN,  # the records' placeholder is the vocabulary's token (kept importable here)
)

from .templates import ConversationTemplate

logger = logging.getLogger(__name__)

BOI_TOKEN = "<boi>"
EOI_TOKEN = "<eoi>"
UNCOND_TOKEN = "<uncond>"
PAD_TOKEN = "<pad>"


def extend_vocabulary(llm, tokenizer, template: ConversationTemplate, codebook_size: int) -> dict[str, int]:
    """Add the special tokens to `tokenizer` and `codebook_size` code rows to `llm` (resize_token_embeddings).

    Returns the ids to store in `UnifiedConfig`. Rows of newly added specials get the mean text embedding; code
    rows are left for `init_code_embeddings`.
    """
    if codebook_size <= 0:
        raise ValueError(f"codebook_size must be positive, got {codebook_size}")
    if "{eos}" in template.stop and tokenizer.eos_token is None:
        raise ValueError(f"template {template.name!r} ends replies with EOS, but the text tokenizer has no eos_token")
    before = len(tokenizer)
    specials = [IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN, UNCOND_TOKEN, *template.special_tokens]
    tokenizer.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    stop_text = template.stop_string(tokenizer.eos_token or "")
    if len(tokenizer(stop_text, add_special_tokens=False).input_ids) != 1:
        raise ValueError(f"template stop string {stop_text!r} is not a single token in the text tokenizer")

    emb = llm.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    code_offset = max(len(tokenizer), old_rows)
    with torch.no_grad():
        text_mean = emb.weight[:before].float().mean(0)
    # No mean resizing: every new row is written below or by init_code_embeddings.
    llm.resize_token_embeddings(code_offset + codebook_size, mean_resizing=False)
    # Specials the tokenizer already had (Qwen's <|im_start|>, an existing pad) keep their trained rows.
    new_ids = list(range(before, len(tokenizer)))
    with torch.no_grad():
        for table in _tables(llm):
            table.weight[new_ids] = text_mean.to(table.weight.dtype)
    ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "boi_token_id": tokenizer.convert_tokens_to_ids(BOI_TOKEN),
        "eoi_token_id": tokenizer.convert_tokens_to_ids(EOI_TOKEN),
        "uncond_token_id": tokenizer.convert_tokens_to_ids(UNCOND_TOKEN),
        "pad_token_id": tokenizer.pad_token_id,
        "code_offset": code_offset,
        "codebook_size": codebook_size,
    }
    logger.info("extended vocabulary: %d text ids, codes at [%d, %d)", len(tokenizer), code_offset,
                code_offset + codebook_size)
    return ids


def _tables(llm) -> list[nn.Module]:
    """Input embeddings and, when untied, the output head."""
    emb, head = llm.get_input_embeddings(), llm.get_output_embeddings()
    return [emb] if head is None or head.weight is emb.weight else [emb, head]


def text_spread(weight: torch.Tensor) -> float:
    """Mean distance of the text rows (`weight`: the table's first rows, before the codes) from their mean."""
    text = weight.detach().float()
    return float((text - text.mean(0)).norm(dim=-1).mean())


@torch.no_grad()
def init_code_embeddings(llm, code_offset: int, vectors: torch.Tensor | None) -> None:
    """Initialise the K code rows of every embedding table.

    `vectors` (K, hidden): the projected codebook (the projector applied to `VQRAE.code_features()`). A projector
    maps every codebook vector near one common direction (a random one: mean cosine ~0.98 between rows on the tiny
    model), which makes all codes look alike to the LLM. So the rows are centred (their mean removed), scaled so
    their spread equals the text rows' spread around the text mean, and placed around the text mean: the codes keep
    the projector's geometry (which codes are close) at the scale of the text embeddings. `None`: every code row gets
    the mean text embedding plus small noise scaled like the text rows' spread (mean init).
    """
    for table in _tables(llm):
        w = table.weight
        text = w[:code_offset].float().cpu()
        k = w.shape[0] - code_offset if vectors is None else vectors.shape[0]
        if code_offset + k > w.shape[0]:
            raise ValueError(f"{k} code vectors do not fit in an embedding table of {w.shape[0]} rows")
        mean, spread = text.mean(0), text.std(0)
        if vectors is None:
            gen = torch.Generator().manual_seed(0)
            new = mean + torch.randn(k, w.shape[1], generator=gen) * spread * 0.1
        else:
            v = vectors.detach().float().cpu()
            v = v - v.mean(0)
            new = mean + v * (text_spread(text) / v.norm(dim=-1).mean().clamp_min(1e-12))
        w[code_offset : code_offset + k] = new.to(device=w.device, dtype=w.dtype)
