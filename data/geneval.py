"""GenEval-format metadata: schema, prompt wording, the official scoring rules, and a ShapesWorld prompt set.

A GenEval record (one line of `evaluation_metadata.jsonl`) is
    {"tag": one of TAGS,
     "include": [{"class": str, "count": int >= 1, "color"?: str, "position"?: [relation, index]}, ...],
     "exclude"?: [{"class": str, "count": int}],   # counting: fail if count+1 objects of the class are found
     "prompt": str}
`position: ["left of", 0]` says this object is left of the objects matched for `include[0]`.

`geneval_check(record, objects)` applies the official GenEval rules (djghosh13/geneval, evaluate_images.py) to a
list of objects `{"class", "color", "box": [x0, y0, x1, y1]}` in detector-confidence order: it is what a
GenEval-style scorer runs on detections, and what the tests run on ShapesWorld ground truth.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# Prompts per tag in the official set (553 in all); the ShapesWorld prompt set defaults to the same counts.
TAG_COUNTS = {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100, "color_attr": 100}
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBER_WORDS = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
POSITION_THRESHOLD = 0.1  # the official value: offsets within 10% of the summed box sizes do not count

_PLURALS = {"cross": "crosses", "box": "boxes", "glass": "glasses", "bus": "buses", "mouse": "mice"}


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def plural(name: str) -> str:
    last = name.split()[-1]
    if last in _PLURALS:
        return name[: len(name) - len(last)] + _PLURALS[last]
    return name + "s"


def noun_phrase(name: str, count: int = 1, color: str | None = None) -> str:
    """'a red circle', 'an orange star', 'three triangles', 'two blue crosses'."""
    words = f"{color} {name}" if color else name
    if count == 1:
        return f"{article(words)} {words}"
    return f"{NUMBER_WORDS.get(count, str(count))} {plural(words)}"


def _relation_masks(a: np.ndarray, b: np.ndarray, threshold: float = POSITION_THRESHOLD) -> dict[str, np.ndarray]:
    """The official rule, vectorised over broadcast boxes (..., 4): relation -> bool array. Centre offset minus
    `threshold` * (summed box sizes) per axis; no relation when both shrunk offsets are ~0 (< 1e-3); otherwise a
    relation holds when its axis's shrunk offset, divided by the full offset's length, is beyond 0.5 (so a
    diagonal offset can give two relations, e.g. left of and above)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    off = (a[..., :2] + a[..., 2:4] - b[..., :2] - b[..., 2:4]) / 2
    dims = (a[..., 2:4] - a[..., :2]) + (b[..., 2:4] - b[..., :2])
    revised = np.maximum(np.abs(off) - threshold * dims, 0) * np.sign(off)
    some = ~np.all(np.abs(revised) < 1e-3, axis=-1)
    d = revised / np.maximum(np.linalg.norm(off, axis=-1, keepdims=True), 1e-12)
    return {"left of": some & (d[..., 0] < -0.5), "right of": some & (d[..., 0] > 0.5),
            "above": some & (d[..., 1] < -0.5), "below": some & (d[..., 1] > 0.5)}


def relative_position(box_a: Sequence[float], box_b: Sequence[float],
                      threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of box A to box B (xyxy, image coordinates, y down), by the official GenEval rule."""
    return {rel for rel, m in _relation_masks(box_a[:4], box_b[:4], threshold).items() if m}


# Every box edge moved by -1 or +1 (the corners of the error hypercube), plus no error at all.
_EDGE_ERRORS = np.array([[0, 0, 0, 0]] + list(itertools.product((-1, 1), repeat=4)), np.float64)


def stable_relations(box_a: Sequence[float], box_b: Sequence[float], margin: float = 2.0) -> tuple[set, set]:
    """(relations that hold, relations that may hold) when every box edge may be off by up to `margin` pixels.

    ShapesWorld text states only the first and denies only what is outside the second, so a detector whose boxes
    include an antialiased rim (thin star tips reach 2 px) reads the same relations as the ground truth."""
    a = np.asarray(box_a[:4], np.float64) + margin * _EDGE_ERRORS[:, None, :]
    b = np.asarray(box_b[:4], np.float64) + margin * _EDGE_ERRORS[None, :, :]
    masks = _relation_masks(a, b)
    return {r for r, m in masks.items() if m.all()}, {r for r, m in masks.items() if m.any()}


def geneval_prompt(record: dict) -> str:
    """The GenEval wording of a record (the official prompts follow exactly these six forms)."""
    tag, inc = record["tag"], record["include"]
    if tag == "counting":
        return f"a photo of {noun_phrase(inc[0]['class'], inc[0]['count'])}"
    if tag == "position":
        rel = inc[1]["position"][0]
        return f"a photo of {noun_phrase(inc[1]['class'])} {rel} {noun_phrase(inc[0]['class'])}"
    parts = [noun_phrase(i["class"], i["count"], i.get("color")) for i in inc]
    return "a photo of " + " and ".join(parts)


def make_record(tag: str, include: list[dict]) -> dict:
    """A complete record (exclude for counting, prompt) from its tag and include list."""
    rec: dict = {"tag": tag, "include": include}
    if tag == "counting":
        rec["exclude"] = [{"class": include[0]["class"], "count": include[0]["count"] + 1}]
    rec["prompt"] = geneval_prompt(rec)
    return rec


def validate_geneval_record(rec: object, where: str = "record") -> None:
    """Raise ValueError (naming `where`) unless `rec` follows the GenEval metadata schema."""

    def bad(msg: str) -> ValueError:
        return ValueError(f"{where}: invalid GenEval metadata: {msg}")

    if not isinstance(rec, dict):
        raise bad(f"expected an object, got {type(rec).__name__}")
    extra = set(rec) - {"tag", "include", "exclude", "prompt"}
    if extra or not {"tag", "include", "prompt"} <= set(rec):
        raise bad(f"keys must be tag, include, prompt[, exclude]; got {sorted(rec)}")
    if rec["tag"] not in TAGS:
        raise bad(f"unknown tag {rec['tag']!r}")
    if not isinstance(rec["prompt"], str) or not rec["prompt"]:
        raise bad("prompt must be a non-empty string")
    inc = rec["include"]
    if not isinstance(inc, list) or not inc:
        raise bad("include must be a non-empty list")
    for k, item in enumerate(inc):
        if not isinstance(item, dict) or not {"class", "count"} <= set(item) or set(item) - {"class", "count", "color", "position"}:
            raise bad(f"include[{k}] must have class, count[, color, position]; got {item!r}")
        if not isinstance(item["class"], str) or not isinstance(item["count"], int) or item["count"] < 1:
            raise bad(f"include[{k}]: class must be a string and count a positive integer")
        if "color" in item and item["color"] not in GENEVAL_COLORS:
            raise bad(f"include[{k}]: unknown color {item['color']!r}")
        if "position" in item:
            pos = item["position"]
            if not (isinstance(pos, list) and len(pos) == 2 and pos[0] in RELATIONS and isinstance(pos[1], int)
                    and 0 <= pos[1] < k):
                raise bad(f"include[{k}]: position must be [relation, index of an earlier include]; got {pos!r}")
    for k, item in enumerate(rec.get("exclude", [])):
        if not isinstance(item, dict) or set(item) != {"class", "count"} or not isinstance(item["count"], int):
            raise bad(f"exclude[{k}] must be {{class, count}}; got {item!r}")
    if rec["tag"] == "counting":
        ex = rec.get("exclude")
        if len(inc) != 1 or not ex or ex[0] != {"class": inc[0]["class"], "count": inc[0]["count"] + 1}:
            raise bad("counting needs one include and exclude of the same class with count + 1")
    wants = {"single_object": (1, False), "colors": (1, True), "two_object": (2, False), "color_attr": (2, True),
             "position": (2, False), "counting": (1, False)}[rec["tag"]]
    if len(inc) != wants[0] or (wants[1] and not all("color" in i for i in inc)):
        raise bad(f"tag {rec['tag']} needs {wants[0]} include item(s){' with colors' if wants[1] else ''}")
    if rec["tag"] == "position" and "position" not in inc[1]:
        raise bad("tag position needs include[1].position")


def check_clauses(record: dict, by_class: dict[str, list], box_of: Callable[[Any], Sequence[float]],
                  colors_of: Callable[[str, list], list[str]],
                  position_threshold: float = POSITION_THRESHOLD) -> tuple[bool, list[str]]:
    """The official GenEval judgement (djghosh13/geneval `evaluate`) over any object type.

    `by_class[name]` holds the kept objects of a class, most confident first. Include clauses are ANDed: clause k
    takes the first `count` objects of its class (too few: fails); a colour clause needs all of them to have the
    colour (`colors_of(name, objects)`, called only for those); a position clause needs every one of them in the
    relation to every object matched by the clause it points at (fails if that clause failed). Exclude clauses are
    ORed: one fails when the class has >= `count` objects. Returns (correct, reasons) with the official wording."""
    correct, reasons, groups = True, [], []
    for req in record.get("include", []):
        name, count = req["class"], req["count"]
        found = by_class.get(name, [])[:count]
        matched = True
        if len(found) < count:
            matched = False
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = list(colors_of(name, found))
                if colors.count(req["color"]) < count:
                    matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in GENEVAL_COLORS if c in colors)
                    reasons.append(f"expected {req['color']} {name}>={count}, found "
                                   f"{colors.count(req['color'])} {req['color']}; and {seen}")
            if "position" in req and matched:
                rel, target = req["position"]
                if groups[target] is None:
                    matched = False
                    reasons.append(f"no target for {name} to be {rel}")
                else:
                    for obj, tgt in itertools.product(found, groups[target]):
                        rels = relative_position(box_of(obj), box_of(tgt), position_threshold)
                        if rel not in rels:
                            matched = False
                            reasons.append(f"expected {name} {rel} target, found {' and '.join(sorted(rels))} target")
                            break
        correct &= matched
        groups.append(found if matched else None)
    for req in record.get("exclude", []):
        n = len(by_class.get(req["class"], []))
        if n >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return correct, reasons


def geneval_check(record: dict, objects: Sequence[dict]) -> tuple[bool, str]:
    """Official GenEval correctness of one image: `objects` are `{"class", "color", "box"}` in confidence order
    (already thresholded; see `vqrae.eval.geneval` for the detector side)."""
    by_class: dict[str, list[dict]] = {}
    for obj in objects:
        by_class.setdefault(obj["class"], []).append(obj)
    correct, reasons = check_clauses(record, by_class, lambda o: o["box"],
                                     lambda _name, objs: [o.get("color") for o in objs])
    return correct, "; ".join(reasons)


def enumerate_records(tag: str, classes: Sequence[str], colors: Sequence[str], max_count: int = 4) -> list[dict]:
    """Every distinct GenEval record of one tag over the given classes and colours."""
    pairs = list(itertools.permutations(classes, 2))
    if tag == "single_object":
        return [make_record(tag, [{"class": c, "count": 1}]) for c in classes]
    if tag == "colors":
        return [make_record(tag, [{"class": c, "count": 1, "color": k}]) for c in classes for k in colors]
    if tag == "counting":
        return [make_record(tag, [{"class": c, "count": n}]) for n in range(2, max_count + 1) for c in classes]
    if tag == "two_object":
        return [make_record(tag, [{"class": a, "count": 1}, {"class": b, "count": 1}]) for a, b in pairs]
    if tag == "position":
        return [make_record(tag, [{"class": a, "count": 1}, {"class": b, "count": 1, "position": [rel, 0]}])
                for a, b in pairs for rel in RELATIONS]
    if tag == "color_attr":
        return [make_record(tag, [{"class": a, "count": 1, "color": ka}, {"class": b, "count": 1, "color": kb}])
                for a, b in pairs for ka, kb in itertools.permutations(colors, 2)]
    raise ValueError(f"unknown GenEval tag {tag!r}; expected one of {TAGS}")


def build_prompt_set(
    classes: Sequence[str],
    colors: Sequence[str] = GENEVAL_COLORS,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    max_count: int = 4,
) -> list[dict]:
    """A GenEval-style prompt set: per tag, `counts[tag]` records drawn without repetition until the distinct
    records of that tag run out, then cycled (ShapesWorld has only 6 distinct single-object prompts)."""
    counts = dict(TAG_COUNTS if counts is None else counts)
    rng = random.Random(seed)
    out = []
    for tag in TAGS:
        pool = enumerate_records(tag, classes, colors, max_count)
        rng.shuffle(pool)
        out += [pool[i % len(pool)] for i in range(counts.get(tag, 0))]
    return out


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
            n += 1
    return n


def read_geneval_metadata(path: str | Path) -> list[dict]:
    """Read and validate an `evaluation_metadata.jsonl` (official or ShapesWorld)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GenEval metadata not found: {path}")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
            validate_geneval_record(rec, where=f"{path}:{line_no}")
            records.append(rec)
    if not records:
        raise ValueError(f"no records in GenEval metadata file {path}")
    return records
