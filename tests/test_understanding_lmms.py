"""The lmms-eval path end to end, offline: fixture datasets in the MME and POPE column layouts and a ShapesWorld test
split, a tiny random unified model, lmms-eval's own metrics (and ours for ShapesWorld) against hand-computed values.

The scripted run swaps the sampler for a function that answers from (question in the prompt, image in the batch):
so the expected scores are known, and the test fails if prompts, images, batching, answer order, task routing or
metric aggregation were wrong. A second run uses the real sampler and checks the answers against `model.chat`.
"""

import argparse
import os
from importlib.metadata import entry_points

import pytest
import torch

pytest.importorskip("lmms_eval")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from datasets import Dataset, DatasetDict
from PIL import Image

import vqrae.eval.lmms.model as adapter_module
from vqrae.eval.lmms.understanding import UnderstandingError, run_understanding
from vqrae.unified_model.testing import tiny_unified_model

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]

# MME: two questions per image (same question_id), perception and cognition categories. Scripted answers and the
# score by hand (per category: accuracy + accuracy+ (both right), in percent; perception = sum over its categories):
#   existence: yes/yes right, no/no right       -> 100 + 100 = 200
#   count:     gt yes answered "No" (wrong), gt no answered "no" (right) -> 50 + 0 = 50
#   commonsense_reasoning (cognition): gt yes "Yes" right, gt no "yes" wrong -> 50 + 0 = 50
MME_ROWS = [  # (question_id, category, question, answer, scripted reply)
    ("e.png", "existence", "Is there a red square in this image?", "Yes", "Yes"),
    ("e.png", "existence", "Is there a bird in this image?", "No", "no"),
    ("c.png", "count", "Are there two squares in this image?", "Yes", "No"),
    ("c.png", "count", "Are there five squares in this image?", "No", "no"),
    ("r.png", "commonsense_reasoning", "Is this colour warm?", "Yes", "Yes"),
    ("r.png", "commonsense_reasoning", "Is this colour cold?", "No", "yes"),
]
MME_EXPECTED = {"mme_perception_score": 250.0, "mme_cognition_score": 50.0}

# POPE: gt yes yes yes no no no, replies yes yes yes yes yes no -> TP 3, FP 2, TN 1, FN 0:
# accuracy 4/6, precision 3/5, recall 1, F1 0.75, yes ratio (of the ground truth, lmms-eval's definition) 0.5
POPE_ROWS = [("Is there a cat in the image?", "yes", "yes"), ("Is there a dog in the image?", "yes", "yes"),
             ("Is there a car in the image?", "yes", "yes"), ("Is there a bus in the image?", "no", "yes"),
             ("Is there a cup in the image?", "no", "yes"), ("Is there a hat in the image?", "no", "no")]
POPE_EXPECTED = {"pope_accuracy": 4 / 6, "pope_precision": 0.6, "pope_recall": 1.0, "pope_f1_score": 0.75,
                 "pope_yes_ratio": 0.5}


def solid(i, size=32):
    return Image.new("RGB", (size, size), COLORS[i % len(COLORS)])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from vqrae.data.shapes import ShapesConfig
    from vqrae.data.shapes_writer import write_shapes

    root = tmp_path_factory.mktemp("understanding")
    model = tiny_unified_model(seed=0)
    model.save_pretrained(root / "model")
    data = root / "data"
    mme = Dataset.from_list([{"question_id": q, "image": solid(i // 2),
                              "question": text + " Please answer yes or no.",
                              "answer": a, "category": c} for i, (q, c, text, a, _) in enumerate(MME_ROWS)])
    DatasetDict({"test": mme}).save_to_disk(str(data / "mme"))
    pope = Dataset.from_list([{"question_id": str(i), "question": q, "answer": a, "image_source": f"img{i}",
                               "image": solid(i), "category": "random"} for i, (q, a, _) in enumerate(POPE_ROWS)])
    DatasetDict({"test": pope}).save_to_disk(str(data / "pope"))
    write_shapes(data / "shapesworld_vqa", ShapesConfig(size=32), {"train": 1, "test": 4}, seed=0,
                 workers=1, formats=("hf",), progress=False)
    return {"root": root, "data": data, "model": model}


def scripted_sampler(env):
    """A stand-in for generate_text answering from the question text in the prompt and the image it was given."""
    from datasets import load_from_disk

    from vqrae.eval.lmms.shapes_vqa import NUMBER_WORDS

    model = env["model"]
    proc = model.processor
    shapes = load_from_disk(str(env["data"] / "shapesworld_vqa" / "hf"))["test"]
    shape_pixels = proc.pixel_values([r["image"] for r in shapes])
    words = {v: k for k, v in NUMBER_WORDS.items() if k != "no"}
    by_question = {q: reply for *_, q, _, reply in MME_ROWS} | {q: reply for q, _, reply in POPE_ROWS}
    calls = []

    def fake(m, prompts, pixel_values=None, **sampling):
        assert m is model and pixel_values is not None and len(pixel_values) == len(prompts)
        calls.append(len(prompts))
        answers = []
        for row, ids in enumerate(prompts):
            assert ids.count(model.config.image_token_id) == model.config.num_image_features  # one image a prompt
            text = model.text_tokenizer.decode([i for i in ids if 0 <= i < len(model.text_tokenizer)],
                                               skip_special_tokens=True)
            hit = [i for i in range(len(shapes)) if torch.allclose(pixel_values[row], shape_pixels[i])]
            if hit:  # ShapesWorld: right for count (as a word), colour, shape, mc; always "yes"; position wrong
                qa = next(qa for qa in shapes[hit[0]]["vqa"] if qa["question"] in text)
                answers.append({"count": words.get(int(qa["answer"]) if qa["type"] == "count" else -1),
                                "exist": "Yes", "position": "nowhere"}.get(qa["type"], qa["answer"]))
            else:
                question = next(q for q in by_question if q in text)
                answers.append(by_question[question])
        return answers

    return fake, shapes, calls


def test_scripted_answers_give_hand_computed_scores(env, monkeypatch):
    fake, shapes, calls = scripted_sampler(env)
    monkeypatch.setattr(adapter_module, "generate_text", fake)
    out = env["root"] / "out_scripted"
    res = run_understanding(env["model"], "mme,pope,shapesworld_vqa", env["data"], out=out, batch_size=4)
    for name, value in MME_EXPECTED.items():
        assert res.metric("mme", name) == pytest.approx(value)
    for name, value in POPE_EXPECTED.items():
        assert res.metric("pope", name) == pytest.approx(value)
    # ShapesWorld by hand from the split's question types: everything right but existence "no" and position
    types = [qa["type"] for r in shapes for qa in r["vqa"]]
    n, n_exist, n_pos = len(types), types.count("exist"), types.count("position")
    assert n_exist > 0 and types.count("mc") > 0
    expect = {"count_acc": 1.0, "color_acc": 1.0, "shape_acc": 1.0, "mc_acc": 1.0, "exist_acc": 0.5,
              "exist_precision": 0.5, "exist_recall": 1.0, "exist_f1": 2 / 3, "exist_yes_ratio": 1.0,
              "overall_acc": (n - n_exist / 2 - n_pos) / n}
    if n_pos:
        expect["position_acc"] = 0.0
    for name, value in expect.items():
        assert res.metric("shapesworld_vqa", name) == pytest.approx(value), name
    assert res.questions == len(MME_ROWS) + len(POPE_ROWS) + n and max(calls) == 4  # batched
    table = (out / "results.md").read_text()
    assert "| mme | mme_perception_score | 250.0000 | 6 |" in table and (out / "results.json").is_file()
    assert (out / "samples_shapesworld_vqa.jsonl").read_text().count("\n") == n


def test_real_sampler_answers_match_chat(env):
    res = run_understanding(env["model"], ["pope"], env["data"], out=env["root"] / "out_real", batch_size=3,
                            max_new_tokens=6)
    samples = res.samples["pope"]
    assert len(samples) == len(POPE_ROWS)
    replies = [s["filtered_resps"][0] for s in sorted(samples, key=lambda s: s["doc_id"])]
    # the adapter's prompt: one user turn, the image first; greedy, answers capped at 6 tokens, cut at "\n\n"
    for i in (0, 5):
        q = POPE_ROWS[i][0] + "\nAnswer the question using a single word or phrase."
        chat = env["model"].chat([{"role": "user", "content": "<image>\n" + q}], images=[solid(i)],
                                 max_new_tokens=6, temperature=0)
        assert replies[i] == chat.split("\n\n")[0].strip()
    # lmms-eval's accuracy is exactly the share of replies equal to the ground truth
    truth = [a for _, a, _ in POPE_ROWS]
    acc = sum(r.lower().strip() == t for r, t in zip(replies, truth)) / len(truth)
    assert res.metric("pope", "pope_accuracy") == pytest.approx(acc)


def test_loglikelihood_of_the_greedy_answer(env):
    from vqrae.unified_model.generation import generate_text

    lm = adapter_module.VQRAELmms(model=env["model"])
    image = solid(2)
    prompt = lm.prompt_ids("What colour is it?", 1)
    greedy = generate_text(env["model"], [prompt], env["model"].processor.pixel_values([image]), max_new_tokens=4)[0]
    assert greedy
    logp, is_greedy = lm.continuation_logprob(prompt, greedy, [image])
    assert is_greedy and logp < 0
    other_logp, other_greedy = lm.continuation_logprob(prompt, greedy + " purple star", [image])
    assert not other_greedy and other_logp < logp


def test_missing_task_folder_names_it(env, tmp_path):
    with pytest.raises(UnderstandingError, match=f"{tmp_path}/pope/"):
        run_understanding(env["model"], "pope", tmp_path)
    with pytest.raises(UnderstandingError, match="unknown task 'no_such_task'"):
        run_understanding(env["model"], "no_such_task", env["data"])


def test_cli_parser_and_error(env, tmp_path, capsys):
    from vqrae.cli.eval_understanding import register_understanding

    parser = argparse.ArgumentParser()
    register_understanding(parser.add_subparsers(dest="suite"))
    args = parser.parse_args(["understanding", "--model", str(env["root"] / "model"), "--tasks", "mme",
                              "--data-root", str(tmp_path)])
    assert args.batch_size == 8 and args.limit is None
    with pytest.raises(ValueError, match=f"{tmp_path}/mme/"):
        args.func(args)


def test_entry_point_and_registry():
    eps = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "vqrae"]
    assert eps, "vqrae is not registered in the lmms_eval.models entry-point group (pip install -e .)"
    manifest = eps[0].load()()
    assert manifest.simple_class_path == "vqrae.eval.lmms.model.VQRAELmms"
    from lmms_eval.models import get_model

    assert get_model("vqrae") is adapter_module.VQRAELmms
