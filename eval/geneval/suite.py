"""`vqrae eval geneval`: score a GenEval image folder, generate one with a unified model, or measure the tokenizer
ceiling on ShapesWorld renders.

Outputs (next to the images unless told otherwise):
    results.jsonl   one line per image: filename, folder, tag, prompt, correct, reason (why it failed), metadata,
                    details (kept detections per class), colors (colours judged per class)
    summary.json    per-tag score, overall (mean of the tags), images, prompts, correct images / prompts
    summary.md      the same as a markdown table
    failures.png    failed images (up to 64), labelled folder/sample
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from vqrae.data.images import image_grid, load_image

from .detection import ColorClassifier, Detector
from .layout import read_image_folder, write_prompt_folder
from .scoring import ScoringRules, judge, summarize, summary_markdown

logger = logging.getLogger(__name__)

DETECTORS = ("auto", "shapes", "coco")


def is_shapes_prompt_set(records: Sequence[dict]) -> bool:
    from vqrae.data.shapes import SHAPES

    return all(i["class"] in SHAPES for r in records for i in [*r["include"], *r.get("exclude", [])])


def make_plugins(kind: str, records: Sequence[dict], detector_weights: str | None = None,
                 clip_weights: str | None = None, device: str | None = None) -> tuple[Detector, ColorClassifier, str]:
    """(detector, colour classifier, kind used); "auto" picks the ShapesWorld detector when every prompt class is a
    ShapesWorld shape, else the COCO plug-ins (local weights required)."""
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}; expected one of {DETECTORS}")
    if kind == "auto":
        kind = "shapes" if is_shapes_prompt_set(records) else "coco"
    if kind == "shapes":
        from .shapes_detector import PaletteColorClassifier, ShapesDetector

        return ShapesDetector(), PaletteColorClassifier(), kind
    from .hf_adapters import load_coco_plugins

    detector, colors = load_coco_plugins(detector_weights, clip_weights, device)
    return detector, colors, kind


def _label(image: Image.Image, text: str, tile: int) -> Image.Image:
    scale = max(1, -(-tile // max(image.size)))
    big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    cell = Image.new("RGB", (big.width, big.height + 12), (255, 255, 255))
    cell.paste(big, (0, 0))
    ImageDraw.Draw(cell).text((2, big.height), text, fill=(0, 0, 0))
    return cell


def labelled_grid(images: Sequence[tuple[Path, str]], path: Path, max_images: int = 64, tile: int = 96) -> bool:
    """A grid of images (`(image path, label)`), each enlarged to about `tile` pixels with its label under it; False
    when there is nothing to draw."""
    cells = [_label(load_image(p), label, tile) for p, label in images[:max_images]]
    if not cells:
        return False
    w, h = max(c.width for c in cells), max(c.height for c in cells)
    cells = [c if c.size == (w, h) else c.resize((w, h)) for c in cells]
    image_grid(cells, padding=2).save(path)
    return True


def score_folder(root: str | Path, detector: Detector, color_classifier: ColorClassifier,
                 out: str | Path | None = None, rules: ScoringRules | None = None, progress: bool = True,
                 title: str = "GenEval") -> dict:
    """Score every image of a GenEval folder; write results.jsonl, summary.json, summary.md, failures.png to `out`
    (default: the folder itself). Returns the summary."""
    from tqdm.auto import tqdm

    root = Path(root)
    prompts, incomplete = read_image_folder(root)
    out = Path(out) if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    results, failures = [], []
    total = sum(len(s) for _, _, s in prompts)
    with tqdm(total=total, unit="img", desc="scoring", disable=not progress) as bar:
        for name, record, samples in prompts:
            meta = json.dumps(record)
            for path in samples:
                image = load_image(path)
                detections = detector(image)
                verdict = judge(record, detections, lambda d, im=image: color_classifier(im, d), rules or ScoringRules())
                results.append({"filename": str(path.relative_to(root)), "folder": name, "tag": record["tag"],
                                "prompt": record["prompt"], "correct": verdict.correct, "reason": verdict.reason,
                                "metadata": meta, "details": verdict.details(), "colors": verdict.colors})
                if not verdict.correct:
                    failures.append((path, f"{name}/{path.stem}"))
                bar.update(1)
    summary = summarize(results)
    summary["incomplete_folders"] = incomplete
    summary["images_dir"] = str(root)
    with open(out / "results.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in results)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary, title))
    summary["failures_png"] = str(out / "failures.png") if labelled_grid(failures, out / "failures.png") else None
    if summary["failures_png"] is None and (out / "failures.png").exists():
        (out / "failures.png").unlink()  # a stale grid from an earlier run
    return summary


def render_reference_folder(records: Sequence[dict], out: str | Path, size: int, num_images: int = 4,
                            seed: int = 0) -> Path:
    """ShapesWorld renders of each prompt (scene `p * num_images + i` of the "geneval" split) in the GenEval layout."""
    from vqrae.data.shapes import ShapesConfig, render_sample

    cfg, out = ShapesConfig(size=size), Path(out)
    for p, rec in enumerate(records):
        images = [Image.fromarray(render_sample(cfg, seed, "geneval", p * num_images + i, record=rec).image)
                  for i in range(num_images)]
        write_prompt_folder(out / f"{p:05d}", rec, images)
    return out


def reconstruct_folder(vq, src: str | Path, dst: str | Path, batch_size: int = 16, code_counts=None) -> Path:
    """Every image of a GenEval folder through the tokenizer (image -> codes -> image), same layout; the codes' counts
    are added to `code_counts` (a K-long tensor) when one is given."""
    import torch

    from vqrae.data.images import image_to_tensor, tensor_to_pil

    prompts, _ = read_image_folder(src)
    device = next(vq.parameters()).device
    for name, record, samples in prompts:
        images = []
        for start in range(0, len(samples), batch_size):
            pixels = torch.stack([image_to_tensor(load_image(p), vq.image_size) for p in samples[start:start + batch_size]])
            with torch.no_grad():
                codes = vq.tokenize(pixels.to(device))
                recon = vq.decode(codes)
            if code_counts is not None:
                code_counts += torch.bincount(codes.reshape(-1).cpu(), minlength=len(code_counts)).to(code_counts)
            images += [tensor_to_pil(r) for r in recon]
        write_prompt_folder(Path(dst) / name, record, images)
    return Path(dst)


def unigram_noise_folder(vq, src: str | Path, dst: str | Path, code_counts, seed: int = 0) -> Path:
    """For every image of a GenEval folder, an image decoded from codes drawn independently from `code_counts` (the
    folder's own code frequencies, from `reconstruct_folder`), same layout: what a generator scores that learned
    only which codes are common, the floor under any text-to-image score on this tokenizer (the detector accepts
    some noise)."""
    import torch

    from vqrae.data.images import tensor_to_pil

    prompts, _ = read_image_folder(src)
    device = next(vq.parameters()).device
    g = torch.Generator().manual_seed(seed)
    tokens = vq.grid_size[0] * vq.grid_size[1]
    for name, record, samples in prompts:
        codes = torch.multinomial(code_counts.double(), len(samples) * tokens, replacement=True, generator=g)
        with torch.no_grad():
            images = vq.decode(codes.view(len(samples), *vq.grid_size).to(device))
        write_prompt_folder(Path(dst) / name, record, [tensor_to_pil(r) for r in images])
    return Path(dst)


def tokenizer_ceiling(vq, records: Sequence[dict], out: str | Path, num_images: int = 4, seed: int = 0,
                      batch_size: int = 16, progress: bool = True) -> dict:
    """Score ShapesWorld renders of the prompts (OUT/renders) and the tokenizer's reconstructions of them
    (OUT/reconstructions) with the ShapesWorld detector: how much of the score the tokenizer alone keeps; and the
    floor, images of unigram code noise (OUT/noise, `unigram_noise_folder`)."""
    import torch

    from vqrae.data.shapes import SHAPES

    if not is_shapes_prompt_set(records):
        raise ValueError(f"--reconstruct needs ShapesWorld prompts (classes {', '.join(SHAPES)}); write them with "
                         "`vqrae data prompts`")
    import shutil

    out = Path(out)
    for sub in ("renders", "reconstructions", "noise"):  # derived from scratch: prompts of an earlier run must go
        shutil.rmtree(out / sub, ignore_errors=True)
    renders = render_reference_folder(records, out / "renders", vq.image_size, num_images, seed)
    counts = torch.zeros(vq.config.codebook_size, dtype=torch.float64)
    recons = reconstruct_folder(vq, renders, out / "reconstructions", batch_size, counts)
    noise = unigram_noise_folder(vq, renders, out / "noise", counts, seed)
    detector, colors, _ = make_plugins("shapes", records)
    ref = score_folder(renders, detector, colors, progress=progress, title="ShapesWorld renders")
    rec = score_folder(recons, detector, colors, progress=progress, title="tokenizer reconstructions")
    floor = score_folder(noise, detector, colors, progress=progress, title="unigram code noise")
    ceiling = {"renders": ref["overall"], "reconstructions": rec["overall"],
               "kept": rec["overall"] / ref["overall"] if ref["overall"] else None, "noise": floor["overall"],
               "tags": {t: {"renders": ref["tags"][t]["score"], "reconstructions": rec["tags"][t]["score"],
                            "noise": floor["tags"][t]["score"]} for t in ref["tags"]},
               "images": ref["images"], "image_size": vq.image_size}
    (out / "ceiling.json").write_text(json.dumps(ceiling, indent=2) + "\n")
    lines = ["## GenEval tokenizer ceiling (ShapesWorld)", "", "| task | renders | reconstructions | unigram noise |",
             "|---|---:|---:|---:|"]
    lines += [f"| {t} | {v['renders']:.4f} | {v['reconstructions']:.4f} | {v['noise']:.4f} |"
              for t, v in ceiling["tags"].items()]
    lines.append(f"| **overall** | **{ceiling['renders']:.4f}** | **{ceiling['reconstructions']:.4f}** | "
                 f"**{ceiling['noise']:.4f}** |")
    lines += ["", ("Unigram noise: codes drawn independently from the renders' code frequencies, decoded: the floor a "
                   "generator must beat (the detector accepts some noise).")]
    (out / "ceiling.md").write_text("\n".join(lines) + "\n")
    return ceiling
