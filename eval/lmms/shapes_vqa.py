"""ShapesWorld VQA scoring: pure functions of (question record, prediction), no model.

The ShapesWorld test split (`vqrae data shapes --out DIR` writes DIR/hf) has one row per image with a `vqa` list of
`{"question", "answer", "type", "pope", "choices"}` (see `vqrae.data.shapes_text.vqa_for`). The lmms-eval task
flattens it to one document per question (`flatten_vqa`) and scores each answer here:

- `count`: the first number in the answer (digits or a word, "zero".."twenty") equals the true count;
- `color`, `shape`: the normalised answer (lower case, no punctuation, no leading article) is the true word, or
  starts with it ("red circle" is a right colour answer, "reddish" is not);
- `exist`: POPE rules: yes/no parsed from the answer's first word; accuracy, precision, recall and F1 of "yes", and
  the ratio of "yes" answers (the `pope` field says which negative sampling, random/popular/adversarial, was used);
- `position`: a "where" question is right when the normalised answer starts with the relation word (left, right,
  above, below); a yes/no question is parsed like `exist`;
- `mc`: the chosen letter (a lone A-D at the start, "B.", "(B)", "answer: B") or, failing that, the text of an option
  equal to the answer, is the right letter.

Every question also counts in `overall_acc` (micro average over all questions). A metric whose question type is
absent from the evaluated documents is NaN.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence

QUESTION_TYPES = ("count", "color", "shape", "exist", "position", "mc")
METRICS = ("overall_acc", "count_acc", "color_acc", "shape_acc", "exist_acc", "exist_precision", "exist_recall",
           "exist_f1", "exist_yes_ratio", "position_acc", "mc_acc")
SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."

NUMBER_WORDS = {w: i for i, w in enumerate((
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"))}
NUMBER_WORDS["no"] = 0  # "no squares"
ARTICLES = ("a", "an", "the")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces, leading articles dropped."""
    words = str(text).lower().translate(_PUNCT).split()
    while words and words[0] in ARTICLES:
        words = words[1:]
    return " ".join(words)


def parse_yes_no(text: str) -> str:
    """'yes', 'no' or 'other' from the answer's first word (POPE / MME style: 'Yes, there is' is yes)."""
    words = normalize(text).split()
    if not words:
        return "other"
    first = words[0]
    if first in ("yes", "y", "true"):
        return "yes"
    if first in ("no", "n", "false"):
        return "no"
    return "other"


def parse_number(text: str) -> int | None:
    """The first number in the answer: digits or a number word (zero..twenty); None when there is none."""
    for word in normalize(text).split():
        if word.isdigit():
            return int(word)
        if word in NUMBER_WORDS:
            return NUMBER_WORDS[word]
    return None


_LETTER = re.compile(r"^\(?([a-d])(?:\)|\.|:|$|\s)")
_ANSWER_IS = re.compile(r"(?:answer|option)\s*(?:is)?\s*:?\s*\(?([a-d])\b")


def parse_letter(text: str, choices: Sequence[str] = ()) -> str | None:
    """The option letter an answer picks: a leading letter ('B', 'B.', '(B)', 'B) circle'), 'the answer is B', or the
    text of exactly one option; None when none of these."""
    low = str(text).strip().lower()
    m = _LETTER.match(low) or _ANSWER_IS.search(low)
    if m:
        return m.group(1).upper()
    norm = normalize(text)
    hits = [i for i, c in enumerate(choices) if normalize(c) == norm]
    return "ABCD"[hits[0]] if len(hits) == 1 and hits[0] < 4 else None


def _starts_with_word(pred: str, answer: str) -> bool:
    pred, answer = normalize(pred), normalize(answer)
    return bool(answer) and (pred == answer or pred.startswith(answer + " "))


def is_correct(qtype: str, answer: str, prediction: str, choices: Sequence[str] = ()) -> bool:
    """Whether `prediction` answers a question of type `qtype` whose true answer is `answer` (module docstring)."""
    if qtype not in QUESTION_TYPES:
        raise ValueError(f"unknown ShapesWorld question type {qtype!r} (expected one of {QUESTION_TYPES})")
    if qtype == "count":
        return parse_number(prediction) == int(answer)
    if qtype == "mc":
        return parse_letter(prediction, choices) == answer.strip().upper()
    if answer in ("yes", "no"):  # exist, and the yes/no form of position
        return parse_yes_no(prediction) == answer
    return _starts_with_word(prediction, answer)


def score_record(doc: Mapping, prediction: str) -> dict:
    """What lmms-eval keeps per question: the fields every aggregation needs."""
    pred = prediction if isinstance(prediction, str) else str(prediction)
    rec = {"question_id": doc.get("question_id"), "type": doc["type"], "pope": doc.get("pope"),
           "answer": doc["answer"], "prediction": pred,
           "correct": bool(is_correct(doc["type"], doc["answer"], pred, doc.get("choices") or ()))}
    if doc["type"] == "exist":
        rec["pred_yes_no"] = parse_yes_no(pred)
    return rec


def _nan() -> float:
    return float("nan")


def accuracy(records: Iterable[Mapping], qtype: str | None = None) -> float:
    rs = [r for r in records if qtype is None or r["type"] == qtype]
    return sum(r["correct"] for r in rs) / len(rs) if rs else _nan()


def pope_counts(records: Iterable[Mapping]) -> dict[str, int]:
    """True/false positives/negatives of 'yes' over the existence questions ('other' answers count as 'no',
    as POPE's own scoring does)."""
    c = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for r in records:
        if r["type"] != "exist":
            continue
        yes = r.get("pred_yes_no", parse_yes_no(r["prediction"])) == "yes"
        truth = r["answer"] == "yes"
        c[("t" if yes == truth else "f") + ("p" if yes else "n")] += 1
    return c


def pope_metrics(records: Iterable[Mapping]) -> dict[str, float]:
    c = pope_counts(records)
    n = sum(c.values())
    if n == 0:
        return {"exist_precision": _nan(), "exist_recall": _nan(), "exist_f1": _nan(), "exist_yes_ratio": _nan()}
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"exist_precision": precision, "exist_recall": recall, "exist_f1": f1,
            "exist_yes_ratio": (c["tp"] + c["fp"]) / n}


def aggregate(records: Sequence[Mapping], metric: str) -> float:
    """One metric of METRICS over the per-question records of `score_record`."""
    records = list(records)
    if metric == "overall_acc":
        return accuracy(records)
    if metric.endswith("_acc"):
        return accuracy(records, metric[: -len("_acc")])
    if metric in ("exist_precision", "exist_recall", "exist_f1", "exist_yes_ratio"):
        return pope_metrics(records)[metric]
    raise ValueError(f"unknown ShapesWorld VQA metric {metric!r} (expected one of {METRICS})")


def all_metrics(records: Sequence[Mapping]) -> dict[str, float]:
    return {m: aggregate(records, m) for m in METRICS}


def is_nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


# ----- the dataset side -----
def flatten_vqa(dataset):
    """A ShapesWorld split (one row per image, a `vqa` list) -> one row per question: image, question, answer,
    type, pope, choices, question_id ("<image id>-<k>"). The images are carried as encoded bytes (not decoded)."""
    from datasets import Image as HFImage

    keep = ("image", "id", "vqa")
    missing = [c for c in keep if c not in dataset.column_names]
    if missing:
        raise ValueError(f"not a ShapesWorld split (no {missing} column); write one with `vqrae data shapes`")
    ds = dataset.select_columns(list(keep)).cast_column("image", HFImage(decode=False))

    def explode(batch):
        out = {k: [] for k in ("image", "question_id", "question", "answer", "type", "pope", "choices")}
        for image, image_id, qas in zip(batch["image"], batch["id"], batch["vqa"]):
            for k, qa in enumerate(qas):
                out["image"].append(image)
                out["question_id"].append(f"{image_id}-{k}")
                out["question"].append(qa["question"])
                out["answer"].append(qa["answer"])
                out["type"].append(qa["type"])
                out["pope"].append(qa.get("pope"))
                out["choices"].append(list(qa.get("choices") or []))
        return out

    flat = ds.map(explode, batched=True, remove_columns=list(keep), desc="ShapesWorld VQA questions")
    return flat.cast_column("image", HFImage())


def doc_to_text(doc: Mapping, lmms_eval_specific_kwargs: Mapping | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    suffix = kw.get("mc_post_prompt", "\n" + LETTER_ANSWER) if doc["type"] == "mc" else \
        kw.get("post_prompt", "\n" + SHORT_ANSWER)
    return f"{kw.get('pre_prompt', '')}{doc['question']}{suffix}"
