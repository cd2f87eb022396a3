"""ShapesWorld: determinism, text and answers checked against the pixels, GenEval metadata, writers and the CLI."""

from __future__ import annotations

import json
import re
from collections import Counter, deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqrae.data.geneval import (
    TAG_COUNTS,
    TAGS,
    build_prompt_set,
    geneval_check,
    read_geneval_metadata,
    relative_position,
    validate_geneval_record,
)
from vqrae.data.shapes import PALETTE, Background, ShapesConfig, render_background, render_sample, rle_to_mask
from vqrae.data.shapes_text import CONFUSABLE

OFFICIAL = Path("/work/shared/benchmarks/geneval/evaluation_metadata.jsonl")
PLURAL = {c: c + ("es" if c.endswith("ss") else "s") for c in ShapesConfig().classes}
SINGULAR = {p: c for c, p in PLURAL.items()}
NUM = {"one": 1, "a": 1, "an": 1, "two": 2, "three": 3, "four": 4}


def components(fg: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean image, as boolean masks (an independent flood fill)."""
    seen = np.zeros_like(fg)
    out = []
    for y0, x0 in zip(*np.nonzero(fg)):
        if seen[y0, x0]:
            continue
        comp = np.zeros_like(fg)
        queue = deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            comp[y, x] = True
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v, u = y + dy, x + dx
                    if 0 <= v < fg.shape[0] and 0 <= u < fg.shape[1] and fg[v, u] and not seen[v, u]:
                        seen[v, u] = True
                        queue.append((v, u))
        out.append(comp)
    return out


def dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def objects_from_pixels(image: np.ndarray, record: dict) -> list[dict]:
    """Objects as seen in the pixels: one per connected component that differs from the background; colour from
    the component's interior pixels, class from the ground-truth mask it covers, box from the component."""
    bg = render_background(Background(**record["background"]), image.shape[0])
    fg = np.abs(image.astype(np.float32) - bg).max(-1) > 30
    gt_masks = [rle_to_mask(o["mask"]) for o in record["objects"]]
    names = np.array(list(PALETTE))
    palette = np.array(list(PALETTE.values()), np.float32)
    found = []
    for comp in components(fg):
        covered = [(comp & m).sum() / m.sum() for m in gt_masks]
        k = int(np.argmax(covered))
        # The blob holds its object's mask and nothing beyond its antialiased rim (thin star tips reach 2 px).
        assert covered[k] > 0.9 and not (comp & ~dilate(dilate(gt_masks[k]))).any(), "a blob matches no object"
        inner = comp.copy()
        inner[1:-1, 1:-1] &= comp[:-2, 1:-1] & comp[2:, 1:-1] & comp[1:-1, :-2] & comp[1:-1, 2:]
        rgb = np.median(image[inner if inner.sum() >= 3 else comp].astype(np.float32), 0)
        ys, xs = np.nonzero(comp)
        found.append({"class": record["objects"][k]["class"], "gt": k,
                      "color": str(names[np.argmin(((palette - rgb) ** 2).sum(1))]),
                      "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]})
    return found


def oracle(question: str, objs: list[dict]) -> str | None:
    """Answer a ShapesWorld question from pixel-derived objects (an independent reading of the templates)."""
    classes = Counter(o["class"] for o in objs)
    colors = Counter(o["color"] for o in objs)
    if question == "How many objects are there in the image?":
        return str(len(objs))
    if m := re.fullmatch(r"How many (\w+) are there in the image\?", question):
        return str(sum(1 for o in objs if PLURAL[o["class"]] == m[1]))
    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        assert classes[m[1]] == 1
        return next(o["color"] for o in objs if o["class"] == m[1])
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        assert colors[m[1]] == 1
        return next(o["class"] for o in objs if o["color"] == m[1])
    if m := re.fullmatch(r"Is there a (\w+) in the image\?", question):
        return "yes" if classes[m[1]] else "no"
    by_class = {o["class"]: o for o in objs}
    if m := re.fullmatch(r"Where is the (\w+) relative to the (\w+)\?", question):
        rels = relative_position(by_class[m[1]]["box"], by_class[m[2]]["box"])
        assert len(rels) == 1
        return {"left of": "left", "right of": "right", "above": "above", "below": "below"}[rels.pop()]
    if m := re.fullmatch(r"Is the (\w+) (left of|right of|above|below) the (\w+)\?", question):
        return "yes" if m[2] in relative_position(by_class[m[1]]["box"], by_class[m[3]]["box"]) else "no"
    return None


def check_caption(caption: str, objs: list[dict]) -> None:
    """Every caption is a complete, true description of the objects seen in the pixels."""
    body = re.sub(r"^(a photo of |\w+ shapes: |one shape: )", "", caption)
    body = re.sub(r" on a (plain|gradient|noisy) background$", "", body)
    body = re.sub(r" (in the (top|bottom) (left|right)|at the (top|bottom)|on the (left|right)|in the center)", "",
                  body)
    if m := re.fullmatch(r"an? (\w+) (left of|right of|above|below) an? (\w+)", body):
        (a,), (b,) = [[o for o in objs if o["class"] == c] for c in (m[1], m[3])]
        assert len(objs) == 2 and m[2] in relative_position(a["box"], b["box"]), caption
        return
    mentioned = Counter()
    for part in re.split(r", | and ", body):
        words = part.split()
        n = NUM[words[0]]
        name = words[-1] if n == 1 else SINGULAR[words[-1]]
        color = words[1] if len(words) == 3 else None
        mentioned[(color, name)] += n
    total = sum(mentioned.values())
    assert total == len(objs), caption
    for (color, name), n in mentioned.items():
        assert sum(1 for o in objs if o["class"] == name and color in (None, o["color"])) == n, caption


@pytest.mark.parametrize("size", [32, 64])
def test_text_and_answers_agree_with_pixels(size):
    cfg = ShapesConfig(size=size)
    tags, pope, first_types = Counter(), Counter(), Counter()
    for i in range(90 if size == 64 else 40):
        s = render_sample(cfg, seed=7, split="train", index=i)
        rec = s.record
        objs = objects_from_pixels(s.image, rec)
        assert len(objs) == len(rec["objects"])  # one blob per object: counting from the pixels works
        assert sorted(o["gt"] for o in objs) == list(range(len(objs)))
        for o in objs:
            gt = rec["objects"][o["gt"]]
            assert o["color"] == gt["color"]  # the colour at the mask is the named colour
            assert all(abs(a - b) <= 2 for a, b in zip(o["box"], gt["box"]))  # + antialiased rim
            assert (rle_to_mask(gt["mask"]) == (s.labels == o["gt"] + 1)).all()
        for cap in rec["captions"]:
            check_caption(cap, objs)
        assert rec["caption"] == rec["captions"][0]
        assert geneval_check(rec["geneval"], objs)[0]
        validate_geneval_record(rec["geneval"])
        for qa in rec["vqa"]:
            if qa["type"] == "mc":
                stem = qa["question"].split("\n")[0]
                assert qa["choices"][ord(qa["answer"]) - ord("A")] == oracle(stem, objs)
                assert len(set(qa["choices"])) == len(qa["choices"]) == 4
            else:
                assert qa["answer"] == oracle(qa["question"], objs), qa
            pope[(qa["pope"], qa["answer"])] += qa["type"] == "exist"
        conv = rec["conversations"]
        assert conv[0]["value"].startswith("<image>\n") and len(conv) == 2 * len(rec["vqa"])
        assert [t["from"] for t in conv] == ["human", "gpt"] * len(rec["vqa"])
        # the conversation asks every VQA question once, in the scene's own random order
        asked = sorted((c["value"].removeprefix("<image>\n").rsplit("\n", 1)[0], a["value"])
                       for c, a in zip(conv[::2], conv[1::2]))
        assert asked == sorted((qa["question"], qa["answer"]) for qa in rec["vqa"])
        first_types[next(qa["type"] for qa in rec["vqa"]
                         if conv[0]["value"].startswith(f"<image>\n{qa['question']}\n"))] += 1
        tags[rec["tag"]] += 1
    # a model must not learn that the question right after the image is always the same kind (VQA asks each alone)
    assert len(first_types) >= 4 and max(first_types.values()) < 0.5 * sum(first_types.values()), first_types
    if size == 64:
        assert set(tags) == {*TAGS, "scene"}
        for kind in ("random", "popular", "adversarial"):
            assert pope[(kind, "yes")] == pope[(kind, "no")] > 0  # POPE balance, all three negative kinds


def test_pope_negatives():
    cfg = ShapesConfig()
    for i in range(60):
        rec = render_sample(cfg, seed=3, index=i).record
        present = {o["class"] for o in rec["objects"]}
        for qa in rec["vqa"]:
            if qa["type"] == "exist" and qa["answer"] == "no":
                asked = re.fullmatch(r"Is there a (\w+) in the image\?", qa["question"])[1]
                if qa["pope"] == "popular":
                    assert asked == next(c for c in cfg.classes if c not in present)
                if qa["pope"] == "adversarial":
                    assert any(asked in CONFUSABLE[c] for c in present)


def test_determinism_and_disjoint_splits(tmp_path):
    cfg = ShapesConfig(size=48)
    a, b = render_sample(cfg, 5, "train", 3), render_sample(cfg, 5, "train", 3)
    assert a.image.tobytes() == b.image.tobytes() and a.record == b.record
    assert render_sample(cfg, 6, "train", 3).image.tobytes() != a.image.tobytes()
    images = {split: {render_sample(cfg, 5, split, i).image.tobytes() for i in range(30)} for split in
              ("train", "val", "test")}
    assert not (images["train"] & images["val"] or images["train"] & images["test"] or images["val"] & images["test"])

    from vqrae.data.shapes_writer import write_shapes

    sizes = {"train": 300, "val": 6}  # more than one pool chunk, so workers=2 really splits the work
    write_shapes(tmp_path / "one", cfg, sizes, seed=1, workers=1, formats=("folder",), progress=False)
    write_shapes(tmp_path / "two", cfg, sizes, seed=1, workers=2, formats=("folder",), progress=False)
    for rel in ("train/metadata.jsonl", "val/metadata.jsonl", "train/images/000299.png", "val/images/000005.png"):
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


def test_geneval_schema_and_prompt_set(tmp_path):
    official = read_geneval_metadata(OFFICIAL)  # the validator accepts the official file as it is
    assert Counter(r["tag"] for r in official) == Counter(TAG_COUNTS)
    key_sets = {tuple(sorted(r)) for r in official}
    item_keys = {tuple(sorted(i)) for r in official for i in r["include"]}

    from vqrae.data.shapes_writer import write_prompt_set

    cfg = ShapesConfig(size=48)
    counts = {t: 6 for t in TAGS}
    records = write_prompt_set(tmp_path, cfg, seed=0, counts=counts)
    ours = read_geneval_metadata(tmp_path / "evaluation_metadata.jsonl")
    assert ours == records and Counter(r["tag"] for r in ours) == Counter(counts)
    assert {tuple(sorted(r)) for r in ours} <= key_sets
    assert {tuple(sorted(i)) for r in ours for i in r["include"]} <= item_keys
    for r in ours:
        if r["tag"] == "counting":
            assert r["exclude"] == [{"class": r["include"][0]["class"], "count": r["include"][0]["count"] + 1}]
    # Each reference scene satisfies its prompt when read from its pixels.
    refs = [json.loads(line) for line in (tmp_path / "reference" / "metadata.jsonl").read_text().splitlines()]
    assert [r["geneval"] for r in refs] == records
    for ref in refs:
        image = np.asarray(Image.open(tmp_path / "reference" / ref["file_name"]))
        objs = objects_from_pixels(image, ref)
        assert geneval_check(ref["geneval"], objs)[0], ref["geneval"]["prompt"]
        assert ref["caption"] == ref["geneval"]["prompt"]
    with pytest.raises(ValueError, match="bench"):  # COCO classes are not ShapesWorld's
        render_sample(cfg, 0, "geneval", 0, record=official[0])
    # Full-size set: the official per-tag counts, only valid records, distinct prompts where there are enough.
    full = build_prompt_set(cfg.classes, cfg.colors)
    assert Counter(r["tag"] for r in full) == Counter(TAG_COUNTS)
    assert len({r["prompt"] for r in full if r["tag"] == "position"}) == 100
    for bad in ({"tag": "counting", "include": [{"class": "star", "count": 2}], "prompt": "x"},
                {"tag": "colors", "include": [{"class": "star", "count": 1, "color": "teal"}], "prompt": "x"},
                {"tag": "position", "include": [{"class": "a", "count": 1}, {"class": "b", "count": 1,
                                                                             "position": ["near", 0]}], "prompt": "x"}):
        with pytest.raises(ValueError, match="invalid GenEval metadata"):
            validate_geneval_record(bad)


def test_geneval_rules():
    box_l, box_r = [0, 10, 10, 20], [30, 10, 40, 20]
    assert relative_position(box_l, box_r) == {"left of"}
    assert relative_position([0, 0, 10, 10], [30, 30, 40, 40]) == {"left of", "above"}
    assert relative_position([0, 0, 10, 10], [1, 1, 11, 11]) == set()  # within the 10% threshold
    rec = {"tag": "counting", "include": [{"class": "star", "count": 2}],
           "exclude": [{"class": "star", "count": 3}], "prompt": "a photo of two stars"}
    star = {"class": "star", "color": "red", "box": box_l}
    assert geneval_check(rec, [star, star])[0]
    assert not geneval_check(rec, [star])[0] and not geneval_check(rec, [star, star, star])[0]


def test_writers_and_cli(tmp_path, capsys):
    from vqrae.cli.cli import main
    from vqrae.data.readers import caption_dataset, conversation_dataset, image_dataset

    out = tmp_path / "sw"
    assert main(["data", "shapes", "--out", str(out), "--num", "20", "--size", "32", "--workers", "1",
                 "--val-frac", "0.1", "--test-frac", "0.1"]) == 0
    info = json.loads((out / "info.json").read_text())
    assert info["splits"] == {"train": 16, "val": 2, "test": 2}
    recs = [json.loads(x) for x in (out / "train" / "metadata.jsonl").read_text().splitlines()]
    assert len(recs) == 16 and all((out / "train" / r["file_name"]).exists() for r in recs)

    folder = image_dataset(out / "train", size=None)
    hf = image_dataset(out / "hf", size=None, split="train")
    assert len(folder) == len(hf) == 16
    for i in (0, 7):
        assert folder[i]["pixels"].shape == (3, 32, 32)
    names = sorted(range(16), key=lambda i: folder[i]["name"])
    assert all((folder[names[i]]["pixels"] == hf[i]["pixels"]).all() for i in range(16))

    caps = caption_dataset(out, split="val", size=None)
    caps_hf = caption_dataset(out / "hf", split="val", size=None)
    assert [caps[i]["caption"] for i in range(2)] == [caps_hf[i]["caption"] for i in range(2)]
    conv = conversation_dataset(out / "test" / "metadata.jsonl", size=None)
    conv_hf = conversation_dataset(out / "hf", split="test", size=None)
    assert conv[1]["conversations"] == conv_hf[1]["conversations"]
    assert conv[1]["conversations"][0]["value"].startswith("<image>")

    import datasets

    row = datasets.load_from_disk(str(out / "hf"))["train"][3]
    assert json.loads(row["geneval"]) == recs[3]["geneval"] and row["objects"][0]["mask"] == recs[3]["objects"][0]["mask"]

    capsys.readouterr()
    assert main(["data", "shapes", "--out", str(tmp_path / "x"), "--num", "4", "--size", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "size" in err and len(err.splitlines()) == 1
