"""The GenEval scoring rules (djghosh13/geneval evaluate_images.py) on hand-made detections: no model, no images
except for the masked-crop colour check."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vqrae.data.geneval import geneval_check, relative_position
from vqrae.eval.geneval.detection import Detection, box_iou, masked_crop
from vqrae.eval.geneval.scoring import ScoringRules, judge, keep_detections, summarize, summary_markdown
from vqrae.eval.geneval.shapes_detector import PaletteColorClassifier


def det(label, score=0.95, box=(0, 0, 10, 10), color=None, mask=None):
    return Detection(label, score, box, mask, color)


def rec(tag, include, exclude=None):
    out = {"tag": tag, "include": include, "prompt": "p"}
    if exclude is not None:
        out["exclude"] = exclude
    return out


SINGLE = rec("single_object", [{"class": "dog", "count": 1}])
TWO_STARS = rec("counting", [{"class": "star", "count": 2}], [{"class": "star", "count": 3}])


def test_threshold_boundaries():
    assert not judge(SINGLE, [det("dog", 0.3)]).correct  # kept only when score > 0.3
    assert judge(SINGLE, [det("dog", np.nextafter(0.3, 1))]).correct
    assert not judge(TWO_STARS, [det("star", 0.9), det("star", 0.95)]).correct  # counting: > 0.9
    assert judge(TWO_STARS, [det("star", 0.9000001), det("star", 0.95)]).correct
    # The counting threshold applies to every class of a counting prompt, and only there.
    assert keep_detections([det("cat", 0.5)], "counting") == {}
    assert [d.score for d in keep_detections([det("cat", 0.5)], "two_object")["cat"]] == [0.5]


def test_counting_with_exclude():
    hi = [det("star", 0.99), det("star", 0.98)]
    assert judge(TWO_STARS, hi).correct
    v = judge(TWO_STARS, [*hi, det("star", 0.95)])  # a third confident star: the exclude clause fails
    assert not v.correct and v.reason == "expected star<3, found 3"
    assert judge(TWO_STARS, [*hi, det("star", 0.85)]).correct  # below 0.9: not counted
    v = judge(TWO_STARS, hi[:1])
    assert not v.correct and v.reason == "expected star>=2, found 1"
    assert judge(TWO_STARS, [*hi, det("circle", 0.99)]).correct  # other classes do not matter


def test_class_not_found_and_failed_target():
    v = judge(SINGLE, [det("cat", 0.99)])
    assert not v.correct and v.reason == "expected dog>=1, found 0"
    pos = rec("position", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}])
    v = judge(pos, [det("cat", 0.99)])
    assert not v.correct and v.reason == "expected dog>=1, found 0; no target for cat to be left of"


def test_position_margin_and_ties():
    a = (0, 0, 10, 10)
    assert relative_position(a, a) == set()  # same centre: no relation at all
    # Horizontal offset d, summed widths 20: margin 2, then |d| - 2 must exceed half of |d|, i.e. |d| > 4.
    assert relative_position(a, (2, 0, 12, 10)) == set()
    assert relative_position(a, (4, 0, 14, 10)) == set()  # exactly at the direction threshold 0.5: no
    assert relative_position(a, (4.01, 0, 14.01, 10)) == {"left of"}
    assert relative_position((4.01, 0, 14.01, 10), a) == {"right of"}
    assert relative_position(a, (0, 30, 10, 40)) == {"above"} and relative_position((0, 30, 10, 40), a) == {"below"}
    assert relative_position(a, (30, 30, 40, 40)) == {"left of", "above"}  # a diagonal gives both
    pos = rec("position", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}])
    assert judge(pos, [det("dog", box=(20, 0, 30, 10)), det("cat", box=(0, 0, 10, 10))]).correct
    v = judge(pos, [det("dog", box=(3, 0, 13, 10)), det("cat", box=(0, 0, 10, 10))])
    assert not v.correct and v.reason == "expected cat left of target, found  target"
    # Only the most confident object of each clause is compared.
    assert judge(pos, [det("dog", 0.9, (20, 0, 30, 10)), det("dog", 0.5, (-30, 0, -20, 0)),
                       det("cat", 0.9, (0, 0, 10, 10))]).correct
    assert not judge(pos, [det("dog", 0.5, (20, 0, 30, 10)), det("dog", 0.9, (-30, 0, -20, 0)),
                           det("cat", 0.9, (0, 0, 10, 10))]).correct


def test_score_ties_keep_detector_order_and_max_objects():
    kept = keep_detections([det("cup", 0.5, box=(i, 0, i + 1, 1)) for i in range(20)], "two_object")
    assert [d.box[0] for d in kept["cup"]] == list(range(16))  # at most 16 per class; ties in detector order
    many = rec("two_object", [{"class": "cup", "count": 1}], [{"class": "cup", "count": 17}])
    assert judge(many, [det("cup", 0.5 + i / 100) for i in range(20)]).correct  # 20 found, 16 kept: < 17
    scores = [d.score for d in keep_detections([det("cup", s) for s in (0.4, 0.9, 0.6)], "x")["cup"]]
    assert scores == [0.9, 0.6, 0.4]
    # NMS is off by default (official max_overlap 1.0); on, it drops the overlapping lower box.
    boxes = [det("cup", 0.9, (0, 0, 10, 10)), det("cup", 0.8, (1, 0, 11, 10)), det("cup", 0.7, (50, 0, 60, 10))]
    assert len(keep_detections(boxes, "x")["cup"]) == 3
    assert [d.score for d in keep_detections(boxes, "x", ScoringRules(max_overlap=0.5))["cup"]] == [0.9, 0.7]
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0 and box_iou((0, 0, 9, 9), (10, 0, 19, 9)) == 0.0


def test_colour_clauses_use_top_count_detections_only():
    color2 = rec("color_attr", [{"class": "car", "count": 1, "color": "red"},
                                {"class": "bus", "count": 1, "color": "blue"}])
    asked = []

    def color_of(d):
        asked.append(d.score)
        return d.color

    v = judge(color2, [det("car", 0.9, color="red"), det("car", 0.8, color="green"), det("bus", 0.7, color="blue")],
              color_of)
    assert v.correct and sorted(asked) == [0.7, 0.9] and v.colors == {"car": ["red"], "bus": ["blue"]}
    v = judge(color2, [det("car", 0.9, color="green"), det("car", 0.8, color="red"), det("bus", 0.7, color="blue")])
    assert not v.correct and v.reason == "expected red car>=1, found 0 red; and 1 green"
    with pytest.raises(ValueError, match="colour"):
        judge(color2, [det("car"), det("bus")])  # no classifier and no colour: a bug in the caller, said so


def test_colour_on_the_masked_crop():
    # A red disc inside a box that is mostly blue: the colour is read where the mask is.
    img = np.zeros((40, 40, 3), np.uint8)
    img[:] = (35, 75, 225)
    yy, xx = np.mgrid[0:40, 0:40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 36
    img[disc] = (220, 35, 35)
    image = Image.fromarray(img)
    box = (5, 5, 35, 35)
    with_mask = Detection("ball", 0.99, box, disc)
    crop = np.asarray(masked_crop(image, with_mask))
    assert crop.shape == (30, 30, 3) and tuple(crop[0, 0]) == (153, 153, 153)  # official #999 outside the mask
    assert tuple(crop[15, 15]) == (220, 35, 35)
    clf = PaletteColorClassifier()
    assert clf(image, with_mask) == "red"
    other = np.zeros_like(disc)
    other[5:35, 5:35] = ~disc[5:35, 5:35]
    assert clf(image, Detection("ball", 0.99, box, other)) == "blue"  # same box, the mask decides
    assert clf(image, Detection("ball", 0.99, box)) == "red"  # no mask: what differs from the crop's border
    colors = rec("colors", [{"class": "ball", "count": 1, "color": "red"}])
    assert judge(colors, [with_mask], lambda d: clf(image, d)).correct


def test_summary_is_the_mean_of_tag_means():
    rows = [{"tag": "counting", "correct": c, "metadata": f"m{i // 2}"} for i, c in enumerate([1, 1, 0, 0])]
    rows += [{"tag": "colors", "correct": c, "metadata": "x"} for c in [1, 0, 0, 0, 0, 0, 0, 0]]
    s = summarize(rows)
    assert s["tags"]["counting"]["score"] == 0.5 and s["tags"]["colors"]["score"] == 0.125
    assert s["overall"] == pytest.approx(0.3125)  # not the image mean 3 / 12
    assert s["prompts"] == 3 and s["correct_prompts"] == pytest.approx(2 / 3)
    assert set(s["missing_tags"]) == {"single_object", "two_object", "position", "color_attr"}
    assert "| counting | 0.5000 | 2 / 4 |" in summary_markdown(s)


def test_data_geneval_check_still_works():
    objs = [{"class": "star", "color": "red", "box": [0, 0, 10, 10]}] * 2
    assert geneval_check(TWO_STARS, objs) == (True, "")
    assert geneval_check(TWO_STARS, objs * 2) == (False, "expected star<3, found 4")


def test_a_rewritten_prompt_folder_holds_only_its_last_images(tmp_path):
    """A rerun with fewer images per prompt used to leave the earlier samples, which the scorer then counted."""
    from vqrae.eval.geneval.layout import write_prompt_folder

    record = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
    img = Image.new("RGB", (8, 8))
    write_prompt_folder(tmp_path / "00000", record, [img, img, img])
    (tmp_path / "00000" / "samples" / "grid.png").write_bytes(b"kept")  # not a sample: left alone
    write_prompt_folder(tmp_path / "00000", record, [img])
    assert sorted(p.name for p in (tmp_path / "00000" / "samples").iterdir()) == ["0000.png", "grid.png"]
