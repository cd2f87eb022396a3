"""Training logs: metrics.jsonl (one JSON object per logged step, or per evaluation) and a loss-curve PNG."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class MetricsLog:
    """Append-only JSONL. On a resume, lines past the resumed step (written by the interrupted run after its last
    checkpoint) are dropped, so the file reads as one uninterrupted run."""

    def __init__(self, path: str | Path, resume_step: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        with open(self.path, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, record: dict[str, Any]) -> None:
        self.append(self.path, record)

    @staticmethod
    def append(path: str | Path, record: dict[str, Any]) -> None:
        with open(path, "a") as fh:
            fh.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN / inf
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line (a killed run) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("skipping an unreadable line in %s", path)
    return records


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """Training loss against step (and each eval metric in its own panel) from metrics.jsonl. None if nothing."""
    # A bare Figure (no pyplot): nothing process-wide changes (pyplot's backend, its figure registry), so a caller's
    # own plotting (a notebook's inline backend) is left as it was.
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    evals = sorted({k for r in records for k, v in r.items() if k.startswith("eval/") and isinstance(v, (int, float))})
    if not train:
        return None
    fig = Figure(figsize=(5 * (1 + len(evals)), 3.5))
    axes = fig.subplots(1, 1 + len(evals), squeeze=False)
    ax = axes[0][0]
    ax.plot(*zip(*train), lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(v > 0 for _, v in train) and max(v for _, v in train) / min(v for _, v in train) > 20:
        ax.set_yscale("log")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    for ax, key in zip(axes[0][1:], evals):
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        ax.plot(*zip(*pts), marker="o", lw=1.2)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    return Path(png_path)
