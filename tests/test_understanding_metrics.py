"""ShapesWorld VQA scoring on small hand-computed cases (pure functions, no model, no lmms-eval run)."""

import math

import pytest

from vqrae.eval.lmms import shapes_vqa as sv


def rec(qtype, answer, pred, choices=(), pope=None):
    return sv.score_record({"type": qtype, "answer": answer, "choices": list(choices), "pope": pope,
                            "question_id": "q"}, pred)


@pytest.mark.parametrize("qtype,answer,pred,ok", [
    ("count", "2", "2", True), ("count", "2", "Two.", True), ("count", "2", "there are 2 shapes", True),
    ("count", "0", "zero", True), ("count", "0", "No.", True), ("count", "3", "2", False),
    ("count", "1", "many", False),
    ("color", "red", "Red", True), ("color", "red", "red circle", True), ("color", "red", "the red.", True),
    ("color", "red", "reddish", False), ("color", "red", "blue", False), ("color", "red", "", False),
    ("shape", "circle", "A circle", True), ("shape", "circle", "square", False),
    ("exist", "yes", "Yes, there is.", True), ("exist", "no", "no", True), ("exist", "no", "maybe", False),
    ("position", "left", "left", True), ("position", "left", "Left of the square", True),
    ("position", "left", "right", False), ("position", "no", "No", True), ("position", "yes", "left", False),
    ("mc", "B", "B", True), ("mc", "B", "B.", True), ("mc", "B", "(B) circle", True), ("mc", "B", "b", True),
    ("mc", "B", "The answer is B", True), ("mc", "B", "circle", True), ("mc", "B", "A", False),
    ("mc", "B", "square", False), ("mc", "B", "", False),
])
def test_is_correct(qtype, answer, pred, ok):
    assert sv.is_correct(qtype, answer, pred, ["square", "circle", "star", "cross"]) is ok


def test_unknown_type_and_metric_say_which():
    with pytest.raises(ValueError, match="weird"):
        sv.is_correct("weird", "1", "1")
    with pytest.raises(ValueError, match="nope"):
        sv.aggregate([], "nope")


def test_pope_precision_recall_f1_by_hand():
    # truth:  yes yes yes no  no  no ; answers: yes yes no yes "other" no
    # TP=2 FN=1 FP=1 TN=2 ("other" counts as no for P/R, as POPE's scoring does, but is not a right answer)
    # -> acc 3/6, P 2/3, R 2/3, F1 2/3, yes ratio 3/6
    truths = ["yes", "yes", "yes", "no", "no", "no"]
    preds = ["Yes", "yes.", "No", "yes", "I think", "no"]
    recs = [rec("exist", t, p, pope="random") for t, p in zip(truths, preds)]
    m = sv.all_metrics(recs)
    assert m["exist_acc"] == pytest.approx(3 / 6)
    assert m["exist_precision"] == pytest.approx(2 / 3)
    assert m["exist_recall"] == pytest.approx(2 / 3)
    assert m["exist_f1"] == pytest.approx(2 / 3)
    assert m["exist_yes_ratio"] == pytest.approx(0.5)
    # asymmetric case: always yes -> TP=3 FP=3 -> P 0.5, R 1, F1 2/3, yes ratio 1
    m = sv.all_metrics([rec("exist", t, "yes") for t in truths])
    assert (m["exist_precision"], m["exist_recall"], m["exist_yes_ratio"]) == (0.5, 1.0, 1.0)
    assert m["exist_f1"] == pytest.approx(2 / 3)
    # never yes: precision and recall 0 (no division by zero), F1 0
    m = sv.all_metrics([rec("exist", t, "no") for t in truths])
    assert (m["exist_precision"], m["exist_recall"], m["exist_f1"], m["exist_yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)


def test_per_type_and_overall_accuracy_by_hand():
    recs = [rec("count", "2", "2"), rec("count", "3", "1"),          # count 1/2
            rec("color", "red", "red"),                                # color 1/1
            rec("shape", "star", "cross"), rec("shape", "star", "x"),  # shape 0/2
            rec("exist", "yes", "yes"), rec("exist", "no", "yes"),     # exist 1/2
            rec("position", "above", "above"),                          # position 1/1
            rec("mc", "C", "C"), rec("mc", "A", "D")]                   # mc 1/2
    m = sv.all_metrics(recs)
    assert m["count_acc"] == 0.5 and m["color_acc"] == 1.0 and m["shape_acc"] == 0.0
    assert m["exist_acc"] == 0.5 and m["position_acc"] == 1.0 and m["mc_acc"] == 0.5
    assert m["overall_acc"] == pytest.approx(5 / 10)  # 1 + 1 + 0 + 1 + 1 + 1 right of 10
    # a type with no questions is NaN, not 0
    only_count = sv.all_metrics(recs[:2])
    assert math.isnan(only_count["color_acc"]) and math.isnan(only_count["exist_f1"])


def test_flatten_vqa_one_row_per_question():
    from datasets import Dataset, Features, Image, List, Value
    from PIL import Image as PILImage

    s = Value("string")
    feats = Features({"image": Image(), "id": s, "vqa": List({"question": s, "answer": s, "type": s, "pope": s,
                                                              "choices": List(s)})})
    img = PILImage.new("RGB", (8, 8), (255, 0, 0))
    ds = Dataset.from_list([
        {"image": img, "id": "a", "vqa": [{"question": "q1", "answer": "1", "type": "count", "pope": None,
                                           "choices": []},
                                          {"question": "q2", "answer": "B", "type": "mc", "pope": None,
                                           "choices": ["x", "y"]}]},
        {"image": img, "id": "b", "vqa": [{"question": "q3", "answer": "no", "type": "exist", "pope": "random",
                                           "choices": []}]},
    ], features=feats)
    flat = sv.flatten_vqa(ds)
    assert flat["question_id"] == ["a-0", "a-1", "b-0"]
    assert flat["type"] == ["count", "mc", "exist"] and flat["pope"] == [None, None, "random"]
    assert flat[1]["choices"] == ["x", "y"] and flat[2]["image"].size == (8, 8)
    assert sv.doc_to_text(flat[1]).endswith(sv.LETTER_ANSWER) and sv.doc_to_text(flat[0]).endswith(sv.SHORT_ANSWER)


def test_shuffled_images_control_keeps_questions_and_moves_every_image():
    import torch

    from vqrae.eval.shapes_quick import shuffle_images, vqa_questions

    docs = vqa_questions(6, 32)
    shuffled = shuffle_images(docs, seed=3)
    assert [d["question"] for d in shuffled] == [d["question"] for d in docs]
    assert [d["answer"] for d in shuffled] == [d["answer"] for d in docs]
    # every question is asked about another image, and every image is still used (by all of another's questions)
    assert all(not torch.equal(s["pixels"], d["pixels"]) for s, d in zip(shuffled, docs))
    image_of = lambda d: d["question_id"].rsplit("-", 1)[0]
    moved = {image_of(d): next(i for i, o in enumerate(docs) if o["pixels"] is s["pixels"]) for s, d in zip(shuffled, docs)}
    assert len(moved) == 6 and sorted(image_of(docs[i]) for i in moved.values()) == sorted(moved)
    assert torch.equal(shuffle_images(docs, seed=3)[0]["pixels"], shuffled[0]["pixels"])  # seeded
