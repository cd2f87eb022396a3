"""`lm-pretrain`: a small causal LM trained from scratch on ShapesWorld text, the stand-in for a downloaded LLM.

The model is an ordinary transformers causal LM built from a config (Qwen2, Qwen3 or Llama), and the text
tokenizer a BPE trained on the same text, with a chat template (our `chatml` template as jinja, its turn markers as
special tokens). The export is a plain Hugging Face folder (config.json, model.safetensors, tokenizer.json,
chat_template.jinja) that `AutoModelForCausalLM` / `AutoTokenizer` load, and that every later stage takes as
`llm=PATH` exactly as it would take Qwen3-0.6B: `UnifiedModel.from_llm(folder, vqrae)` with `template="auto"` uses
its chat template.

Text: every record gives its captions as plain documents and its VQA conversation (the `<image>` placeholder
removed: the LM sees no pixels yet) rendered with the chat template. Documents end with EOS and are packed into
blocks of `max_length` tokens (no padding at all); the loss is next-token prediction on every token, or with
`loss_on: answers` on the captions and the conversations' replies only (the questions and the chat boilerplate are
most of a conversation's tokens and are not what a reader must learn).

`scene_context: caption` puts the scene's fullest caption (every object's colour, shape and place) where the image
was. Without it, every answer in the corpus comes from nowhere ("What color is the cross?" -> a colour guessed from
the question alone), so the stand-in LM learns the language prior and no in-context reading, which any downloaded
LLM has and which the unified model needs: its image features stand where that description stood.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from vqrae.unified_model.templates import join_segments, tokens_in_spans

from ..config import TrainConfig
from ..stage import Stage, unwrap
from .common import image_text_dataset

logger = logging.getLogger(__name__)

ARCHITECTURES = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
                 "llama": ("LlamaConfig", "LlamaForCausalLM")}
CHAT_SPECIALS = ("<|im_start|>", "<|im_end|>")


@dataclasses.dataclass
class LMPretrainConfig(TrainConfig):
    data: str = "shapes"  # "shapes" (records rendered on the fly) or a caption/conversation data path
    data_num: int = 20000  # records whose text trains the LM
    val_num: int = 256
    architecture: Literal["qwen2", "qwen3", "llama"] = "qwen2"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 704  # ~2.75 x hidden, as Qwen
    max_length: int = 128  # tokens per packed block
    vocab_size: int = 1000  # upper bound for the BPE vocabulary
    tokenizer_corpus: int = 5000  # records whose text trains the tokenizer
    # what stands for the image in a conversation (see above; data.shapes_text.SCENE_STYLES)
    scene_context: Literal["none", "caption", "caption+attributes"] = "none"
    loss_on: Literal["all", "answers"] = "all"  # conversations scored on every token, or on the replies only
    caption_documents: bool = True  # each caption also as a document of its own
    turns_per_document: int = 0  # question-answer pairs per conversation document, each after the scene (0: all)
    # each packed document attends to itself only, its positions counted from 0 (position_ids that restart at every
    # document: transformers then masks attention across documents); else a block is one causal stream
    document_mask: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"config keys 'hidden_size'/'num_heads'/'num_kv_heads': {self.hidden_size} must divide "
                             f"by {self.num_heads} heads, which must divide by {self.num_kv_heads} kv heads")
        from vqrae.data.shapes_text import SCENE_STYLES

        if self.scene_context not in ("none", *SCENE_STYLES):
            raise ValueError(f"config key 'scene_context': must be one of {('none', *SCENE_STYLES)}, got "
                             f"{self.scene_context!r}")
        if self.loss_on not in ("all", "answers"):
            raise ValueError(f"config key 'loss_on': must be 'all' or 'answers', got {self.loss_on!r}")
        if self.turns_per_document < 0:
            raise ValueError(f"config key 'turns_per_document': must be >= 0, got {self.turns_per_document}")
        if self.max_length < 8:
            raise ValueError(f"config key 'max_length': must be >= 8, got {self.max_length}")


def documents(item: dict, eos: str, scene_context: str = "none", captions: bool = True,
              turns_per_document: int = 0) -> list[list[tuple[str, bool]]]:
    """The texts one record gives, each as `(text, is_answer)` segments: its captions (one segment each, an answer
    throughout), then its conversation in the chat template (the assistant's replies and their end marker are the
    answers), the image left out (`scene_context="none"`) or replaced by the record's fullest caption
    (`"caption"`). `turns_per_document` > 0 cuts the conversation into documents of that many question-answer
    pairs, each opening with the scene (as VQA evaluation asks one question about an image)."""
    from vqrae.data.shapes_text import scene_description
    from vqrae.unified_model.templates import get_template

    record = item.get("record") or item
    texts = record.get("captions") or ([item["caption"]] if item.get("caption") else [])
    docs = [[(c, True)] for c in texts] if captions else []
    scene = scene_description(item, scene_context) if scene_context != "none" else ""
    turns = record.get("conversations") or []
    roles = {"human": "user", "gpt": "assistant"}
    messages = [{"role": roles.get(t["from"], t["from"]), "content": t["value"]} for t in turns]
    k = 2 * turns_per_document or len(messages) or 1
    for start in range(0, len(messages), k):
        group = [dict(m) for m in messages[start:start + k]]
        if start and group[0]["role"] == "user":  # a later group asks about the same image
            group[0]["content"] = "<image>\n" + group[0]["content"].replace("<image>", "")
        for m in group:
            m["content"] = m["content"].replace("<image>", scene).strip()
        docs.append(get_template("chatml").segments(group, eos=eos))  # = the tokenizer's chat template
    return docs


def _without(text: str, markers: tuple[str, ...]) -> str:
    for m in markers:
        text = text.replace(m, "\n")
    return text


class PackedText(Dataset):
    """Documents tokenized as a whole, each ended by EOS, concatenated and cut into blocks of `length` tokens, with
    a mask of the tokens the loss reads: every token (`loss_on="all"`), or in conversations only the answers'
    (`"answers"`, as chat fine-tuning scores them; captions stay scored throughout), and each token's position in
    its document (what `position_ids` restart from, so that no document reads another's scene)."""

    def __init__(self, items: Dataset, tokenizer, length: int, scene_context: str = "none", loss_on: str = "all",
                 captions: bool = True, turns_per_document: int = 0):
        ids: list[int] = []
        scored: list[bool] = []
        positions: list[int] = []
        for i in range(len(items)):
            for segments in documents(items[i], tokenizer.eos_token, scene_context, captions, turns_per_document):
                text, spans = join_segments(segments)
                enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                ids.extend(enc.input_ids + [tokenizer.eos_token_id])
                positions.extend(range(len(enc.input_ids) + 1))
                answers = tokens_in_spans(enc.offset_mapping, spans) if loss_on == "answers" else None
                # the EOS is scored where the document ends in an answer (a caption), not after a conversation
                scored.extend(answers + [segments[-1][1]] if answers is not None else [True] * (len(enc.input_ids) + 1))
        n = len(ids) // length * length
        self.blocks = torch.tensor(ids[:n], dtype=torch.long).view(-1, length)
        self.scored = torch.tensor(scored[:n], dtype=torch.bool).view(-1, length)
        self.positions = torch.tensor(positions[:n], dtype=torch.long).view(-1, length)
        if len(self.blocks) == 0:
            raise ValueError(f"the text holds {len(ids)} tokens, fewer than one block of {length}")
        logger.info("packed %d tokens into %d blocks of %d (%.0f%% scored)", len(ids), len(self.blocks), length,
                    100 * self.scored.float().mean().item())

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.blocks[i], self.scored[i], self.positions[i]


class LMPretrainStage(Stage):
    name = "lm-pretrain"
    config_class = LMPretrainConfig
    partitioned_init = False  # built from a config here; later stages load large LMs with partitioned_init

    def __init__(self, config: LMPretrainConfig):
        super().__init__(config)
        self._items = image_text_dataset(config.data, config.data_num, 32, "train", config.seed)
        self._val_items = image_text_dataset("shapes" if config.data == "shapes" else config.data,
                                             config.val_num, 32, "val", config.seed)
        self.text_tokenizer = None  # trained in build_model, by the main process only
        self._train = self._val = None

    def _load_or_train_tokenizer(self):
        from transformers import AutoTokenizer

        from vqrae.data.text_tokenizer import train_text_tokenizer
        from vqrae.unified_model.templates import get_template

        from .. import distributed

        folder = Path(self.config.output_dir) / "text_tokenizer"
        tok = None
        main = not distributed.is_initialized() or torch.distributed.get_rank() == 0
        if main and not (folder / "tokenizer.json").is_file():
            template = get_template("chatml")
            n = min(self.config.tokenizer_corpus, len(self._items))
            corpus = []
            for i in range(n):
                record = self._items[i].get("record") or self._items[i]
                corpus += list(record.get("captions") or [self._items[i].get("caption", "")])
                # each conversation as the template renders it, the chat markers (special tokens) left out: the
                # role names ("assistant") then merge into one token each, not six characters every turn
                segments = documents({"conversations": record.get("conversations") or []}, "")
                corpus += [_without(join_segments(s)[0], CHAT_SPECIALS) for s in segments]
            # Qwen2's byte-level pipeline: what transformers rebuilds for a qwen2 folder anyway (see text_tokenizer)
            tok = train_text_tokenizer(corpus, folder, vocab_size=self.config.vocab_size,
                                       extra_special_tokens=("<image>", *CHAT_SPECIALS), style="qwen2")
            tok.chat_template = template.to_jinja()
            tok.save_pretrained(str(folder))
        distributed.barrier()
        if tok is None:
            tok = AutoTokenizer.from_pretrained(str(folder))
        return tok

    def build_model(self) -> nn.Module:
        import transformers

        c = self.config
        self.text_tokenizer = tok = self._load_or_train_tokenizer()
        config_name, model_name = ARCHITECTURES[c.architecture]
        config = getattr(transformers, config_name)(
            vocab_size=len(tok), hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
            max_position_embeddings=max(2048, c.max_length), tie_word_embeddings=False,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
        config._attn_implementation = "sdpa"
        return getattr(transformers, model_name)(config)

    def train_dataset(self) -> Dataset:
        if self._train is None:
            self._train = self._packed(self._items)
        return self._train

    def _packed(self, items: Dataset) -> PackedText:
        c = self.config
        return PackedText(items, self.text_tokenizer, c.max_length, c.scene_context, c.loss_on, c.caption_documents,
                          c.turns_per_document)

    def collate(self, samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict:
        ids, scored, positions = (torch.stack(column) for column in zip(*samples, strict=True))
        batch = {"input_ids": ids, "labels": ids.masked_fill(~scored, -100)}
        if self.config.document_mask:
            batch["position_ids"] = positions
        return batch

    @staticmethod
    def _forward(model: nn.Module, batch: dict):
        return model(input_ids=batch["input_ids"], labels=batch["labels"], position_ids=batch.get("position_ids"),
                     use_cache=False)

    def loss(self, model: nn.Module, batch: dict, step: int):
        return self._forward(model, batch).loss, {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Held-out perplexity, and how often the greedy next token is right (on the scored tokens)."""
        if self._val is None:
            self._val = self._packed(self._val_items)
        llm = unwrap(model)
        losses, right, total = [], 0, 0
        for start in range(0, len(self._val), self.config.batch_size):
            batch = self.to_device(self.collate([self._val[i] for i in range(start, min(start + self.config.batch_size,
                                                                                        len(self._val)))]))
            out = self._forward(llm, batch)
            losses.append(float(out.loss))
            pred, target = out.logits[:, :-1].argmax(-1), batch["labels"][:, 1:]
            right += int(((pred == target) & (target != -100)).sum())
            total += int((target != -100).sum())
        loss = sum(losses) / len(losses)
        return {"loss": loss, "perplexity": float(torch.tensor(loss).exp()), "next_token_acc": right / total}

    def export(self, module: nn.Module, state_dict: dict[str, torch.Tensor], folder: Path) -> None:
        module.save_pretrained(folder, state_dict=state_dict)  # the module is the LM itself: same keys
        self.text_tokenizer.save_pretrained(str(folder))
