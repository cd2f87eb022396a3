"""A scripted chat with a unified model on a held-out ShapesWorld image, checked against the ground truth: what the
quickstart shows and `vqrae chat --demo` runs.

The conversation (one `ChatSession`, exactly what `vqrae chat` drives):
1. the user attaches a held-out test image and asks three questions about it (how many, which colour, which shape),
   each answer checked against the image's ground truth;
2. the user asks for a drawing of another held-out scene's caption, phrased as in the drawing training data; the
   model must open an image by itself (`<boi>`); the drawing is judged by the ShapesWorld detector with the official
   GenEval rules against that caption's GenEval record;
3. the user asks a question about the drawing (from the drawn scene's ground truth), answered from the conversation,
   where the drawing sits as `<boi>` codes `<eoi>`.
It writes transcript.md (with the images) and demo.json (every turn, right or wrong).
"""

from __future__ import annotations

import json
from pathlib import Path

from vqrae.data.shapes_text import SHORT_ANSWER

TYPES = ("count", "color", "shape")


def _pick(vqa: list[dict], qtype: str) -> dict | None:
    return next((q for q in vqa if q["type"] == qtype and "\n" not in q["question"]), None)


def _text(pieces) -> tuple[str, list[Path]]:
    text, drawn = [], []
    for p in pieces:
        (drawn if isinstance(p, Path) else text).append(p)
    return "".join(text).strip(), drawn


def scripted_chat(model, out: str | Path, index: int = 0, seed: int = 0, max_tries: int = 50) -> dict:
    """Run the demo conversation on test image `index` (the first image from there on with all three question
    types) and a drawing request for the next two-object scene; returns (and writes) what happened."""
    from vqrae.data.images import tensor_to_pil
    from vqrae.data.readers import ShapesDataset
    from vqrae.data.shapes import ShapesConfig
    from vqrae.unified_model.chat import ChatSession
    from vqrae.unified_model.collator import draw_request

    from .geneval.scoring import judge
    from .geneval.shapes_detector import PaletteColorClassifier, ShapesDetector
    from .lmms.shapes_vqa import is_correct

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = model.processor.image_size
    data = ShapesDataset(index + max_tries, ShapesConfig(size=size), seed=0, split="test", size=size)
    item = next((data[i] for i in range(index, len(data))
                 if all(_pick(data[i]["record"]["vqa"], t) for t in TYPES)), None)
    scene = next((data[i]["record"] for i in range(index, len(data))
                  if data[i]["record"]["tag"] in ("color_attr", "position", "two_object")), None)
    if item is None or scene is None:
        raise ValueError(f"no suitable held-out image in test images {index}..{index + max_tries}")
    image_path = out / "image.png"
    tensor_to_pil(item["pixels"]).save(image_path)

    session = ChatSession(model, out_dir=out, seed=seed)
    session.attach(image_path)
    turns = []
    for qtype in TYPES:
        q = _pick(item["record"]["vqa"], qtype)
        reply, _ = _text(session.ask(f"{q['question']}\n{SHORT_ANSWER}"))
        turns.append({"kind": qtype, "question": q["question"], "answer": reply, "truth": q["answer"],
                      "correct": is_correct(qtype, q["answer"], reply)})

    request = draw_request(scene["caption"])
    reply, drawn = _text(session.ask(request))
    drawing = {"kind": "draw", "question": request, "answer": reply, "drew": bool(drawn),
               "image": str(drawn[0]) if drawn else None, "correct": False}
    if drawn:
        from PIL import Image

        image = Image.open(drawn[0]).convert("RGB")
        colors = PaletteColorClassifier()
        verdict = judge(scene["geneval"], ShapesDetector()(image), lambda d: colors(image, d))
        drawing.update(correct=verdict.correct, reason=verdict.reason)
    turns.append(drawing)

    follow = _pick(scene["vqa"], "color") or _pick(scene["vqa"], "count")
    reply, _ = _text(session.ask(f"{follow['question']}\n{SHORT_ANSWER}"))  # as the drawing data's follow-ups
    turns.append({"kind": f"drawing {follow['type']}", "question": follow["question"], "answer": reply,
                  "truth": follow["answer"], "correct": is_correct(follow["type"], follow["answer"], reply)})

    result = {"image": str(image_path), "turns": turns,
              "answers_correct": sum(t["correct"] for t in turns[:3]), "drew_by_itself": drawing["drew"],
              "drawing_correct": drawing["correct"], "followup_correct": turns[-1]["correct"]}
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "transcript.md").write_text(transcript_markdown(result, out))
    session.save(out / "session.json")
    return result


def transcript_markdown(result: dict, out: Path) -> str:
    mark = lambda ok: "right" if ok else "WRONG"
    lines = ["# Scripted chat on a held-out ShapesWorld image", "", f"![image]({Path(result['image']).name})", ""]
    for t in result["turns"]:
        lines.append(f"**user:** {t['question']}  ")
        if t["kind"] == "draw":
            drew = f"![drawing]({Path(t['image']).relative_to(out)})" if t["image"] else "(did not draw)"
            lines.append(f"**model:** {t['answer']} {drew}  ")
            lines.append(f"*the ShapesWorld detector: {mark(t['correct'])}{' (' + t.get('reason', '') + ')' if t.get('reason') else ''}*")
        else:
            lines.append(f"**model:** {t['answer']}  ")
            lines.append(f"*truth: {t['truth']}, {mark(t['correct'])}*")
        lines.append("")
    lines.append(f"{result['answers_correct']}/3 answers right; drew by itself: {result['drew_by_itself']}; drawing "
                 f"right: {result['drawing_correct']}; question about the drawing right: {result['followup_correct']}")
    return "\n".join(lines) + "\n"
