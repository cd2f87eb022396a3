"""The quickstart's report: every stage's loss curve in one figure, and report.md with the measured figures.

    from vqrae.eval.report import loss_curves_figure, write_report
    loss_curves_figure({"encoder": "runs/quickstart/encoder", ...}, "runs/quickstart/loss_curves.png")
    write_report("runs/quickstart", state)      # state: the quickstart's quickstart.json

Both read only what the runs left on disk (each stage's metrics.jsonl, the quickstart's state), so the report can be
rebuilt at any time without rerunning anything.
"""

from __future__ import annotations

import math
import platform
from pathlib import Path

from vqrae.train.metrics import read_metrics


def loss_curves_figure(stages: dict[str, str | Path], png_path: str | Path) -> Path | None:
    """One panel per stage: its training loss against step (log scale when it spans > 20x). Stages without a
    metrics.jsonl are left out; None when none has one."""
    from matplotlib.figure import Figure

    curves = {}
    for name, folder in stages.items():
        path = Path(folder) / "metrics.jsonl"
        if path.is_file():
            pts = [(r["step"], r["loss"]) for r in read_metrics(path) if isinstance(r.get("loss"), (int, float))]
            if pts:
                curves[name] = pts
    if not curves:
        return None
    cols = min(4, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, pts) in zip(axes.flat, curves.items()):
        values = [v for _, v in pts]
        if len(pts) >= 20:  # batches grouped by task make a mixture's loss jump: show the running mean over it
            ax.plot(*zip(*pts), lw=0.8, alpha=0.35)
            k = 5
            mean = [sum(values[max(0, i - k + 1): i + 1]) / len(values[max(0, i - k + 1): i + 1])
                    for i in range(len(values))]
            ax.plot([s for s, _ in pts], mean, lw=1.5)
        else:
            ax.plot(*zip(*pts), lw=1.2)
        if min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    return Path(png_path)


def _pct(v) -> str:
    return f"{v:.1%}" if isinstance(v, (int, float)) else "-"


def _num(v, fmt: str = ".3f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def machine_line() -> str:
    import os

    import torch

    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {'CUDA' if torch.cuda.is_available() else 'no GPU'}")


def report_markdown(state: dict) -> str:
    """report.md from the quickstart state (see scripts/quickstart.py): timings, reconstruction, understanding,
    generation, the scripted chat, and the pictures (paths relative to the quickstart folder)."""
    steps, results = state.get("steps", {}), state.get("results", {})
    lines = ["# vqrae quickstart report", "",
             f"Machine: {state.get('machine', machine_line())}. Everything below was measured by this run.", ""]

    lines += ["## Time per step", "", "| step | what | seconds |", "|---|---|---|"]
    for name, s in steps.items():
        lines.append(f"| {name} | {s.get('title', '')} | {s['seconds']:.0f} |")
    total = sum(s["seconds"] for s in steps.values())
    lines += [f"| **total** | | **{total:.0f}** ({_minutes(total)}) |", ""]

    rec = results.get("eval-tokenizer", {})
    if rec:
        lines += ["## Tokenizer: reconstruction of held-out test images", "",
                  ("| stage | PSNR | SSIM | codebook use | perplexity | colour probe (feat / codes) | shape acc | "
                  "colour acc | box acc | GenEval-style rec / orig |"), "|---|---|---|---|---|---|---|---|---|---|"]
        for stage in ("stage1", "stage2"):
            m = rec.get(stage)
            if m:
                lines.append(
                    f"| {stage} | {_num(m.get('psnr'), '.2f')} | {_num(m.get('ssim'))} | {_pct(m.get('utilization'))} "
                    f"| {_num(m.get('perplexity'), '.0f')} | {_num(m.get('colour_probe_features'), '.1f')} / "
                    f"{_num(m.get('colour_probe_codes'), '.1f')} | {_pct(m.get('shape_accuracy'))} | "
                    f"{_pct(m.get('colour_accuracy'))} | {_pct(m.get('box_accuracy'))} | "
                    f"{_num(m.get('geneval'))} / {_num(m.get('geneval_originals'))} |")
        lines += ["", "Originals (odd rows) over their reconstructions (even rows), tokenizer stage 2:", "",
                  "![reconstructions](eval-stage2/grid.png)", ""]

    vqa = results.get("eval-understanding", {})
    if vqa:
        keys = [k for k in ("overall_acc", "count_acc", "color_acc", "shape_acc", "exist_f1", "exist_precision",
                            "exist_recall", "position_acc", "mc_acc") if k in vqa]
        control = vqa.get("shuffled_images", {})
        lines += [f"## Understanding: ShapesWorld VQA ({vqa.get('questions', 0):.0f} questions on held-out images)",
                  "", "| images | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1),
                  "| right | " + " | ".join(_pct(vqa[k]) for k in keys) + " |"]
        if control:
            lines += ["| shuffled | " + " | ".join(_pct(control.get(k)) for k in keys) + " |", "",
                      ("Shuffled: each question asked about another question's image. A type that scores as well there "
                      "is answered from the language prior, not from the image.")]
        lines.append("")

    gen = results.get("eval-generation", {})
    if gen:
        tags = gen.get("tags", {})
        lines += [(f"## Generation: GenEval-style, ShapesWorld prompts ({gen.get('images', 0)} images, "
                  f"CFG {gen.get('cfg_scale', '-')})"), "",
                  "| overall | " + " | ".join(tags) + " | tokenizer ceiling | fraction of ceiling |",
                  "|" + "---|" * (len(tags) + 3),
                  f"| {_num(gen.get('overall'))} | " + " | ".join(_num(v) for v in tags.values())
                  + f" | {_num(gen.get('ceiling'))} | {_pct(gen.get('fraction_of_ceiling'))} |", "",
                  ("The ceiling is the GenEval-style score of the tokenizer's reconstructions of held-out scenes "
                  "(table above): a generator cannot draw what its codes cannot hold."), "",
                  "![generated](generated.png)", ""]

    chat = results.get("chat", {})
    if chat:
        lines += ["## Scripted chat about a held-out image", "",
                  (f"{chat.get('answers_correct', 0)}/3 answers right; drew by itself: {chat.get('drew_by_itself')}; "
                  f"drawing right: {chat.get('drawing_correct')}; question about its drawing right: "
                  f"{chat.get('followup_correct')}. Transcript: [chat/transcript.md](chat/transcript.md)"), ""]

    lines += ["## Training curves", "", "![loss curves](loss_curves.png)", ""]
    models = state.get("models", {})
    if models:
        lines += ["## Use what it trained", "", "```bash"]
        lines += [f"vqrae chat --model {models['unified']}",
                  f"vqrae generate --model {models['unified']} --prompt \"a photo of a red circle\" --out drawings",
                  f"vqrae reconstruct --tokenizer {models['tokenizer']} --image YOUR.png --out rec.png", "```", ""]
    return "\n".join(lines)


def write_report(out: str | Path, state: dict) -> Path:
    path = Path(out) / "report.md"
    path.write_text(report_markdown(state))
    return path
