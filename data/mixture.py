"""Training data mixtures for the unified model: several sources, each with a task and a weight.

    sources = [SourceSpec(task="conversation", data="shapes", num=4000, weight=3),   # ShapesWorld VQA
               SourceSpec(task="draw", data="shapes", num=4000, weight=1),           # "Draw ..." -> <boi> codes <eoi>
               SourceSpec(task="conversation", data="llava.json", image_root="images/")]
    data = Mixture([open_source(s, image_size=64, seed=0) for s in sources], length=20000, seed=0)

A source is where the records come from (`data`: "shapes" renders ShapesWorld on the fly, anything else is a path
the data readers open: records JSON/JSONL, a `datasets` folder, parquet/arrow, tar shards) and which `task` its
records train (the collator's tasks: `conversation` (VQA, LLaVA conversations), `describe` (an image answered with
its caption: LLaVA-1.5 alignment), `t2i` (caption -> image codes), `draw` (a chat turn asking for the caption's
picture, answered with `<boi>` codes `<eoi>`, and optional follow-up questions about it)).

The mixture is a map-style dataset of `length` samples: sample i comes from source s with probability
weight_s / sum(weights) (drawn once from `seed`), and each source is walked through in a fresh random order every
time it is used up. Every sample carries `task`, `source` and `sample_id` (= i), which the collator uses to decide
caption dropout, so that decision is the same in every DataLoader worker and after a resume. Make `length` at least
the number of samples the run consumes (`max_steps * global batch`): the engine's sampler then visits every
position at most once per pass. `group` > 1 (the global batch size) cuts the order into runs of one source, so a
batch holds records of similar length (see `_group_by_source`; `padding_fraction` measures what it saves).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from vqrae.data.records import IMAGE_TOKEN
from vqrae.data.shapes_text import SHORT_ANSWER, fullest_caption

logger = logging.getLogger(__name__)

TASKS = ("conversation", "describe", "t2i", "draw")


@dataclasses.dataclass
class SourceSpec:
    task: Literal["conversation", "describe", "t2i", "draw"]
    data: str = "shapes"  # "shapes" or a path the readers open (records, datasets folder, parquet, tar shards)
    weight: float = 1.0
    num: int = 0  # shapes: images rendered (required); a path: the first `num` records (0: all)
    split: str = "train"  # shapes: the split rendered; a datasets dataset: the split read
    image_root: str | None = None  # records: folder their image paths are relative to (default: the file's)
    followup: int = 1  # draw records from ShapesWorld: questions about the drawing asked after it (0: none)
    context: int = 0  # draw records from ShapesWorld: every other one comes after this many questions about its
    # image (with the image), as drawing requests come in the middle of a chat (0: never)
    turns: int = 0  # conversation records: keep this many question-answer pairs of each (0: all); which ones
    # rotates with the record, so every kind of question is still asked across the data set
    name: str = ""  # shown in logs and part of the cache key (default "data:task")
    caption: Literal["primary", "fullest"] = "primary"  # items with several captions (ShapesWorld): the first, or
    # the longest, which names every object's colour, shape and place (what alignment should teach the projector)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"data source task must be one of {TASKS}, got {self.task!r}")
        if self.caption not in ("primary", "fullest"):
            raise ValueError(f"data source {self.label}: caption must be 'primary' or 'fullest', got {self.caption!r}")
        if not self.weight > 0:
            raise ValueError(f"data source {self.label}: weight must be > 0, got {self.weight}")
        if self.num < 0 or (self.data == "shapes" and self.num == 0):
            raise ValueError(f"data source {self.label}: num must be > 0 for shapes (images to render), got {self.num}")
        if self.followup < 0 or self.turns < 0 or self.context < 0:
            raise ValueError(f"data source {self.label}: followup, turns and context must be >= 0, got "
                             f"{self.followup}, {self.turns}, {self.context}")

    @property
    def label(self) -> str:
        return self.name or f"{self.data}:{self.task}"

    @classmethod
    def from_dict(cls, d: dict, where: str = "data") -> SourceSpec:
        """One entry of a config's `data:` list; unknown keys are a one-line error naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"{where}: each data source is a mapping (task, data, weight, ...), got {d!r}")  # noqa: TRY004
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown data source key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        if "task" not in d:
            raise ValueError(f"{where}: a data source needs a task ({', '.join(TASKS)})")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from None


class SourceDataset(Dataset):
    """One source's items as collator records: the reader's item (pixels, caption / conversations, ...) plus
    `task`; ShapesWorld draw records also get follow-up questions from their VQA."""

    def __init__(self, spec: SourceSpec, items: Dataset):
        self.spec, self.items = spec, items

    def __len__(self) -> int:
        return len(self.items) if not self.spec.num or self.spec.data == "shapes" else min(self.spec.num,
                                                                                             len(self.items))

    def __getitem__(self, i: int) -> dict:
        item = dict(self.items[i])
        item["task"] = self.spec.task
        if self.spec.task == "conversation" and self.spec.turns and item.get("conversations"):
            item["conversations"] = keep_turns(item["conversations"], self.spec.turns, i)
        if self.spec.task == "draw" and self.spec.followup and item.get("record"):
            vqa = [q for q in item["record"].get("vqa") or [] if q.get("type") != "mc"]
            if vqa:  # which questions: fixed per image, so every pass over the source asks the same
                start = item["record"].get("index", i) % len(vqa)
                item["followup"] = [{"question": f"{q['question']}\n{SHORT_ANSWER}", "answer": q["answer"]}
                                    for q in (vqa[start:] + vqa[:start])[: self.spec.followup]]
        if self.spec.task == "draw" and self.spec.context and i % 2 == 0 and item.get("conversations"):
            item["context"] = keep_turns(item["conversations"], self.spec.context, i // 2)
        if self.spec.caption == "fullest" and (fullest := fullest_caption(item)):
            item["caption"] = fullest
        if self.spec.task in ("t2i", "draw", "describe") and not item.get("caption"):
            item["caption"] = ""  # the collator skips and counts it (an empty caption is bad input)
        return item


def keep_turns(turns: list[dict], k: int, index: int) -> list[dict]:
    """`k` consecutive question-answer pairs of a LLaVA conversation (cyclically, starting at pair `index` mod the
    number of pairs), the image placeholder moved to the first kept question. Conversations of up to `k` pairs, or
    not made of (human, gpt) pairs, are returned as they are."""
    pairs = [turns[j : j + 2] for j in range(0, len(turns), 2)]
    if len(pairs) <= k or any(len(p) != 2 or p[0].get("from") != "human" for p in pairs):
        return turns
    start = index % len(pairs)
    kept = [[dict(t) for t in pairs[(start + j) % len(pairs)]] for j in range(k)]
    had_image = any(IMAGE_TOKEN in str(p[0].get("value", "")) for p in pairs)
    for p in kept:
        p[0]["value"] = str(p[0]["value"]).replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, "")
    if had_image:
        kept[0][0]["value"] = f"{IMAGE_TOKEN}\n{kept[0][0]['value']}"
    return [t for p in kept for t in p]


def open_source(spec: SourceSpec, image_size: int, seed: int = 0) -> SourceDataset:
    """The source's items (see `SourceDataset`); a path is opened (and validated) now."""
    if spec.data == "shapes":
        from vqrae.data.readers import ShapesDataset
        from vqrae.data.shapes import ShapesConfig

        items = ShapesDataset(spec.num, ShapesConfig(size=image_size), seed=seed, split=spec.split, size=image_size)
    else:
        from vqrae.data import readers

        if spec.task == "conversation":
            items = readers.conversation_dataset(spec.data, size=image_size, image_root=spec.image_root)
        else:
            items = readers.caption_dataset(spec.data, size=image_size, image_root=spec.image_root)
    return SourceDataset(spec, items)


class Mixture(Dataset):
    """`length` samples drawn from `sources` by weight (see the module docstring)."""

    def __init__(self, sources: list[Dataset], weights: list[float] | None = None, length: int | None = None,
                 seed: int = 0, names: list[str] | None = None, group: int = 0):
        if not sources:
            raise ValueError("a data mixture needs at least one source")
        sizes = [len(s) for s in sources]
        if min(sizes) == 0:
            raise ValueError(f"data source {(names or [str(i) for i in range(len(sizes))])[sizes.index(0)]} is empty")
        weights = list(weights or [getattr(getattr(s, "spec", None), "weight", 1.0) for s in sources])
        self.names = names or [getattr(getattr(s, "spec", None), "label", f"source{i}") for i, s in enumerate(sources)]
        self.sources = sources
        self.length = int(length or sum(sizes))
        rng = np.random.default_rng(seed)
        p = np.asarray(weights, dtype=np.float64)
        self.source_of = rng.choice(len(sources), size=self.length, p=p / p.sum())
        self.index_in = np.empty(self.length, dtype=np.int64)
        for s, size in enumerate(sizes):
            positions = np.flatnonzero(self.source_of == s)
            passes = -(-len(positions) // size)  # ceil: each pass is a fresh permutation of the source
            order = np.concatenate([rng.permutation(size) for _ in range(max(passes, 1))])
            self.index_in[positions] = order[: len(positions)]
        if group > 1:
            self._group_by_source(group, rng)
        logger.info("data mixture of %d samples: %s", self.length, ", ".join(
            f"{n} {c} ({c / self.length:.0%}, {c / size:.1f} passes)"
            for n, c, size in zip(self.names, self._counts(), sizes)))

    def _group_by_source(self, group: int, rng: np.random.Generator) -> None:
        """Reorder so that every run of `group` consecutive samples comes from one source (the remainders of all
        sources, mixed, at the end): a task's records have similar lengths (a text-to-image record is its prompt +
        h*w codes, a VQA conversation N image slots + several turns), so batches cut from a run pad little. This is
        LLaVA's modality grouping by source. The order must then be used as is (the stage turns the engine's
        shuffling off: the mixture is already random)."""
        chunks, rest = [], []
        for s in range(len(self.sources)):
            positions = np.flatnonzero(self.source_of == s)
            n = len(positions) // group * group
            chunks += list(positions[:n].reshape(-1, group))
            rest.append(positions[n:])
        order = np.concatenate([chunks[k] for k in rng.permutation(len(chunks))] + rest) if chunks else \
            np.concatenate(rest)
        self.source_of, self.index_in = self.source_of[order], self.index_in[order]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        s = int(self.source_of[i])
        item = self.sources[s][int(self.index_in[i])]
        item = dict(item) if isinstance(item, dict) else {"value": item}
        item["source"] = self.names[s]
        item["sample_id"] = i
        return item

    def _counts(self) -> list[int]:
        return np.bincount(self.source_of, minlength=len(self.sources)).tolist()

    def task_counts(self) -> dict[str, int]:
        """Samples per source name (what the mixture's weights made of it; sources of one name add up)."""
        out: dict[str, int] = {}
        for n, c in zip(self.names, self._counts()):
            out[n] = out.get(n, 0) + c
        return out


def padding_fraction(lengths: list[int], batch_size: int) -> float:
    """Fraction of a right-padded batch's tokens that are padding, over consecutive batches of `lengths`."""
    pad = total = 0
    for b in range(0, len(lengths) - batch_size + 1, batch_size):
        chunk = lengths[b : b + batch_size]
        pad += max(chunk) * len(chunk) - sum(chunk)
        total += max(chunk) * len(chunk)
    return pad / max(total, 1)
