"""ShapesWorld text: captions and VQA pairs computed from a scene's ground truth (never from the sampler's intent).

Captions are exact descriptions: every object is mentioned with its true count, so a caption is a valid
text-to-image prompt for its image. VQA pairs cover counting, colour, shape, existence (POPE-style: one yes and one
no per image; the no is a `random`, `popular` or `adversarial` negative), relative position (the GenEval rule) and
multiple choice with lettered options. Each pair is `{"question", "answer", "type", "pope", "choices"}`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from vqrae.data.geneval import OPPOSITE, geneval_prompt, make_record, noun_phrase, plural, stable_relations
from vqrae.data.shapes import ShapesConfig, choice, sample

# Shapes a model is most likely to confuse with each shape: the source of adversarial POPE negatives.
CONFUSABLE = {
    "circle": ("square", "diamond"),
    "square": ("diamond", "circle"),
    "triangle": ("diamond", "star"),
    "star": ("cross", "triangle"),
    "diamond": ("square", "triangle"),
    "cross": ("star", "square"),
}
SHORT_ANSWER = "Answer the question using a single word or phrase."  # the LLaVA-1.5 prompt suffixes
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
POPE_KINDS = ("random", "popular", "adversarial")
RELATION_WORD = {"left of": "left", "right of": "right", "above": "above", "below": "below"}


def join_phrases(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _grouped(objects: list[dict], with_color: bool) -> list[str]:
    keys = [(o["color"] if with_color else None, o["class"]) for o in objects]
    counts = Counter(keys)
    return [noun_phrase(c, counts[(k, c)], k) for k, c in dict.fromkeys(keys)]


def _where(obj: dict, size: int) -> str:
    cx, cy = (obj["box"][0] + obj["box"][2]) / 2, (obj["box"][1] + obj["box"][3]) / 2
    row = ("top", "", "bottom")[min(int(3 * cy / size), 2)]
    col = ("left", "", "right")[min(int(3 * cx / size), 2)]
    if row and col:
        return f"in the {row} {col}"
    if row:
        return f"at the {row}"
    return f"on the {col}" if col else "in the center"


def complete_records(objects: list[dict]) -> list[dict]:
    """GenEval records whose prompt describes the scene completely (no object left out)."""
    counts = Counter(o["class"] for o in objects)
    if len(objects) == 1:
        o = objects[0]
        return [make_record("single_object", [{"class": o["class"], "count": 1}]),
                make_record("colors", [{"class": o["class"], "count": 1, "color": o["color"]}])]
    if len(counts) == 1:
        return [make_record("counting", [{"class": objects[0]["class"], "count": len(objects)}])]
    if len(objects) == 2 and len(counts) == 2:
        a, b = objects
        recs = [make_record("two_object", [{"class": a["class"], "count": 1}, {"class": b["class"], "count": 1}]),
                make_record("color_attr", [{"class": a["class"], "count": 1, "color": a["color"]},
                                           {"class": b["class"], "count": 1, "color": b["color"]}])]
        for rel in sorted(stable_relations(b["box"], a["box"])[0]):
            recs.append(make_record("position", [{"class": a["class"], "count": 1},
                                                 {"class": b["class"], "count": 1, "position": [rel, 0]}]))
        return recs
    return []


def captions_for(objects: list[dict], background: str, record: dict, tag: str, size: int) -> list[str]:
    """Exact captions, the primary one first: the GenEval prompt for scenes drawn for a tag, else the full
    colour-and-count description."""
    full = join_phrases(_grouped(objects, with_color=True))
    caps = [f"a photo of {full}"]
    if tag != "scene":
        caps.insert(0, geneval_prompt(record))
    caps += [geneval_prompt(r) for r in complete_records(objects)]
    caps.append(f"a photo of {join_phrases(_grouped(objects, with_color=False))}")
    bg = {"plain": "a plain", "gradient": "a gradient", "noise": "a noisy"}[background]
    caps.append(f"{full} on {bg} background")
    caps.append(join_phrases([f"{noun_phrase(o['class'], 1, o['color'])} {_where(o, size)}" for o in objects]))
    n = len(objects)
    caps.append(f"{noun_phrase('shape', n) if n > 1 else 'one shape'}: {full}")
    return list(dict.fromkeys(caps))


def fullest_caption(item: dict) -> str | None:
    """The longest of an item's captions (its own `captions`, else its ShapesWorld record's), which names every
    object's colour, shape and place; else its `caption` (None when it has none)."""
    caps = item.get("captions") or (item.get("record") or {}).get("captions")
    return max(caps, key=len) if caps else item.get("caption")


def attribute_listing(objects: list[dict]) -> str:
    """Each object's colour right after its shape ("colors: star green and triangle yellow"): captions always put
    the colour first, so a text LM learns "the word after red" (what shape) by copying and never "the word before
    circle" (what colour); this order gives that lookup the same copying form."""
    return "colors: " + join_phrases([f"{o['class']} {o['color']}" for o in objects])


SCENE_STYLES = ("caption", "caption+attributes")  # how `scene_description` renders a scene


def scene_description(item: dict, style: str = "caption") -> str:
    """What stands for an image in text: its fullest caption (`"caption"`), or that caption followed by each
    object's colour after its shape (`"caption+attributes"`, see `attribute_listing`)."""
    text = fullest_caption(item) or ""
    objects = (item.get("record") or item).get("objects")
    if style == "caption+attributes" and objects:
        text = f"{text}; {attribute_listing(objects)}"
    return text


def _qa(question: str, answer: str, kind: str, pope: str | None = None, choices: list[str] | None = None) -> dict:
    return {"question": question, "answer": answer, "type": kind, "pope": pope, "choices": choices or []}


def _pope_negative(present: set[str], cfg: ShapesConfig, kind: str, rng: np.random.Generator) -> str:
    absent = [c for c in cfg.classes if c not in present]
    if kind == "popular":  # ShapesWorld draws classes uniformly; popularity is the configured class order
        return absent[0]
    if kind == "adversarial":
        for c in sorted(present, key=cfg.classes.index):
            for other in CONFUSABLE.get(c, ()):
                if other in absent:
                    return other
    return choice(rng, absent)


def vqa_for(objects: list[dict], cfg: ShapesConfig, rng: np.random.Generator) -> list[dict]:
    """VQA pairs about the scene, every answer computed from the ground-truth objects."""
    counts = Counter(o["class"] for o in objects)
    color_counts = Counter(o["color"] for o in objects)
    present = set(counts)
    out = [_qa("How many objects are there in the image?", str(len(objects)), "count")]
    asked = choice(rng, cfg.classes)
    out.append(_qa(f"How many {plural(asked)} are there in the image?", str(counts.get(asked, 0)), "count"))

    unique = [o for o in objects if counts[o["class"]] == 1]
    if unique:
        o = unique[int(rng.integers(len(unique)))]
        out.append(_qa(f"What color is the {o['class']}?", o["color"], "color"))
    by_color = [o for o in objects if color_counts[o["color"]] == 1]
    if by_color:
        o = by_color[int(rng.integers(len(by_color)))]
        out.append(_qa(f"What shape is the {o['color']} object?", o["class"], "shape"))

    if len(present) < len(cfg.classes):  # POPE: a yes and a no for every image
        kind = choice(rng, POPE_KINDS)
        yes = choice(rng, sorted(present))
        no = _pope_negative(present, cfg, kind, rng)
        pair = [_qa(f"Is there a {yes} in the image?", "yes", "exist", kind),
                _qa(f"Is there a {no} in the image?", "no", "exist", kind)]
        out += [pair[i] for i in rng.permutation(2)]

    pairs = [(a, b) for a in unique for b in unique if a is not b]
    if pairs:
        a, b = pairs[int(rng.integers(len(pairs)))]
        sure, maybe = stable_relations(a["box"], b["box"])
        if len(maybe) == 1 and sure == maybe:  # one relation, whatever the box error
            rel = next(iter(sure))
            out.append(_qa(f"Where is the {a['class']} relative to the {b['class']}?", RELATION_WORD[rel], "position"))
            asked_rel, answer = (rel, "yes") if rng.random() < 0.5 else (OPPOSITE[rel], "no")
            out.append(_qa(f"Is the {a['class']} {asked_rel} the {b['class']}?", answer, "position"))

    if unique or by_color:
        if by_color and (not unique or rng.random() < 0.5):
            o = by_color[int(rng.integers(len(by_color)))]
            stem, truth, pool = f"What shape is the {o['color']} object?", o["class"], cfg.classes
        else:
            o = unique[int(rng.integers(len(unique)))]
            stem, truth, pool = f"What color is the {o['class']}?", o["color"], cfg.colors
        distractors = sample(rng, [p for p in pool if p != truth], 3)
        choices = [truth, *distractors]
        choices = [choices[i] for i in rng.permutation(len(choices))]
        letters = "ABCD"
        options = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(choices))
        out.append(_qa(f"{stem}\n{options}", letters[choices.index(truth)], "mc", choices=choices))
    return out


def vqa_to_conversation(vqa: list[dict], order: list[int] | None = None) -> list[dict]:
    """LLaVA conversation: `<image>` in the first human turn, LLaVA-1.5 answer-format suffixes. `order`: the
    questions' order (a permutation of their indices). Render scenes in a random order: `vqa_for` always asks the
    object count first, and a model trained on that order learns that a question right after the image is a count
    (measured: colour questions asked on their own, as VQA evaluation asks them, were answered "4")."""
    conv = []
    for k, qa in enumerate(vqa if order is None else [vqa[i] for i in order]):
        suffix = LETTER_ANSWER if qa["type"] == "mc" else SHORT_ANSWER
        prefix = "<image>\n" if k == 0 else ""
        conv.append({"from": "human", "value": f"{prefix}{qa['question']}\n{suffix}"})
        conv.append({"from": "gpt", "value": qa["answer"]})
    return conv
