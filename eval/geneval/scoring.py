"""The GenEval scoring core: a pure function of (metadata record, detections), and the per-tag summary.

Follows djghosh13/geneval `evaluation/evaluate_images.py` and `summary_scores.py`:
1. Per class, detections sorted by score (ties keep the detector's order), kept when score > 0.3 (> 0.9 for every
   class of a `counting` prompt), at most 16 per class; then greedy NMS at IoU `max_overlap` (1.0, i.e. off, as the
   official default).
2. Clauses (`vqrae.data.geneval.check_clauses`): an include clause takes the top `count` detections of its class;
   colour is asked of the colour classifier for those only (on their masked crops); position compares box centres
   with the 0.1 * (size A + size B) margin; an exclude clause fails when its class has >= `count` kept detections;
   all includes must hold and any failing exclude fails the image.
3. Score: per tag, the mean of per-image correctness; overall, the mean of the tags' scores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vqrae.data.geneval import POSITION_THRESHOLD, TAGS, check_clauses

from .detection import Detection, box_iou


@dataclass(frozen=True)
class ScoringRules:
    """The official evaluator's options (`--options threshold=... counting_threshold=...`), at their defaults."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0  # NMS IoU; 1.0 keeps every box (the official default)
    position_threshold: float = POSITION_THRESHOLD


@dataclass
class Verdict:
    correct: bool
    reason: str  # "" when correct; the official reasons joined by "; "
    kept: dict[str, list[Detection]] = field(default_factory=dict)  # per class, most confident first
    colors: dict[str, list[str]] = field(default_factory=dict)  # colours judged, per class asked

    def details(self) -> dict:
        return {name: [d.to_json() for d in dets] for name, dets in self.kept.items()}


def keep_detections(detections: Sequence[Detection], tag: str, rules: ScoringRules = ScoringRules()
                    ) -> dict[str, list[Detection]]:
    """Per class: sort by score, keep score > threshold (counting: > counting_threshold), cap at max_objects, NMS."""
    thr = rules.counting_threshold if tag == "counting" else rules.threshold
    by_class: dict[str, list[Detection]] = {}
    for det in sorted(detections, key=lambda d: -d.score):  # sorted() is stable: ties keep detector order
        if det.score > thr:
            by_class.setdefault(det.label, []).append(det)
    out = {}
    for name, dets in by_class.items():
        order = dets[: rules.max_objects]
        kept = []
        while order:
            best = order.pop(0)
            kept.append(best)
            if rules.max_overlap < 1:
                order = [d for d in order if box_iou(best.box, d.box) < rules.max_overlap]
        out[name] = kept
    return out


def judge(record: dict, detections: Sequence[Detection], color_of: Callable[[Detection], str] | None = None,
          rules: ScoringRules = ScoringRules()) -> Verdict:
    """Official GenEval correctness of one image from its detections. `color_of(detection)` is the colour
    classifier bound to the image (None: use each detection's own `color`)."""
    kept = keep_detections(detections, record["tag"], rules)
    judged: dict[str, list[str]] = {}

    def colors_of(name: str, dets: list[Detection]) -> list[str]:
        if color_of is None and any(d.color is None for d in dets):
            raise ValueError(f"colour clause on {name!r} but no colour classifier and no detection colour")
        judged[name] = [color_of(d) if color_of is not None else d.color for d in dets]
        return judged[name]

    correct, reasons = check_clauses(record, kept, lambda d: d.box, colors_of, rules.position_threshold)
    return Verdict(bool(correct), "; ".join(reasons), kept, judged)


def summarize(results: Sequence[dict]) -> dict:
    """Per-image results (tag, correct, metadata) -> the official summary: per-tag score, overall = mean over tags."""
    if not results:
        raise ValueError("no scored images to summarize")
    tags: dict[str, list[bool]] = {}
    prompts: dict[str, bool] = {}
    for r in results:
        tags.setdefault(r["tag"], []).append(bool(r["correct"]))
        key = r["metadata"] if isinstance(r["metadata"], str) else json.dumps(r["metadata"])
        prompts[key] = prompts.get(key, False) or bool(r["correct"])
    order = [t for t in TAGS if t in tags] + [t for t in tags if t not in TAGS]
    per_tag = {t: {"score": sum(tags[t]) / len(tags[t]), "correct": sum(tags[t]), "images": len(tags[t])}
               for t in order}
    return {
        "overall": sum(v["score"] for v in per_tag.values()) / len(per_tag),
        "tags": per_tag,
        "missing_tags": [t for t in TAGS if t not in tags],
        "images": len(results),
        "prompts": len(prompts),
        "correct_images": sum(bool(r["correct"]) for r in results) / len(results),
        "correct_prompts": sum(prompts.values()) / len(prompts),
    }


def summary_markdown(summary: dict, title: str = "GenEval") -> str:
    lines = [f"## {title}", "", "| task | score | correct / images |", "|---|---:|---:|"]
    for tag, v in summary["tags"].items():
        lines.append(f"| {tag} | {v['score']:.4f} | {v['correct']} / {v['images']} |")
    lines.append(f"| **overall** | **{summary['overall']:.4f}** | {summary['images']} images, "
                 f"{summary['prompts']} prompts |")
    if summary["missing_tags"]:
        lines += ["", f"Overall is the mean of the tags present; missing: {', '.join(summary['missing_tags'])}."]
    lines += ["", (f"Correct images {summary['correct_images']:.2%}; prompts with a correct image "
                   f"{summary['correct_prompts']:.2%}.")]
    return "\n".join(lines) + "\n"
