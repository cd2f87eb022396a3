"""Scaling laws of the autoregressive generator: power-law fits, the compute frontier, the table and the plots.

    law = fit_power_law(params, losses)                  # loss = a * N^-b + c, least squares
    interval = bootstrap_exponent(params, losses)        # b's percentile interval over resampled runs
    report = write_report(runs, "runs/scaling")          # scaling.json, scaling.md and three PNGs

`runs` are the records `vqrae scale` writes per model size (SIZE/result.json): parameters (`params_non_embedding`,
`params_total`), `tokens`, `flops` (6 N D), the final validation loss `val_loss`, the loss `curve` over training
([{step, tokens, flops, loss}]) and `geneval` ({overall, tags}) or None.

The fit is variable projection: for a fixed exponent b the model is linear in (a, c), solved in closed form with
a >= 0 and c >= 0 (a cross-entropy has a non-negative floor); b itself is found by a scan over a log grid, refined
by golden-section search. Nothing depends on a starting guess, nothing can diverge, and numpy is all it needs.
`robust=True` reweights the residuals (Huber, by iteratively reweighted least squares) so that one bad run does not
pull the law. N is divided by its geometric mean while fitting (N^-b of a billion is 1e-27 at b = 3).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

B_RANGE = (1e-3, 3.0)  # exponents searched
GRID = 160  # grid points of the exponent scan (log-spaced), before the golden-section refinement
HUBER_K = 1.345  # Huber's constant: 95% efficiency on Gaussian residuals


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = a * x^-b + c, fitted on `points` points; `rmse` of the (unweighted) residuals."""

    a: float
    b: float
    c: float
    rmse: float
    points: int

    def __call__(self, x) -> np.ndarray:
        return self.a * np.power(np.asarray(x, dtype=float), -self.b) + self.c

    def formula(self, var: str = "N") -> str:
        return f"loss = {self.a:.4g} * {var}^-{self.b:.4f} + {self.c:.4f}"

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _check_points(x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{what}: {x.size} x values but {y.size} y values")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"{what}: every value must be finite")
    if np.any(x <= 0):
        raise ValueError(f"{what}: x values (parameters, FLOPs) must be > 0")
    if np.unique(x).size < 3:
        raise ValueError(f"{what}: a * x^-b + c has 3 parameters; it needs at least 3 distinct x values, got "
                         f"{np.unique(x).size}")
    return x, y


def _solve_ac(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares y ~ a X + c with a, c >= 0, for every row of X (G, n) at once -> a, c, SSE (G,)."""
    sw = w.sum()
    mx, my = (X * w).sum(1) / sw, (w * y).sum() / sw
    sxx = (w * (X - mx[:, None]) ** 2).sum(1)
    sxy = (w * (X - mx[:, None]) * (y - my)).sum(1)
    a = np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1.0), 0.0)
    c = my - a * mx
    # c < 0: the floor is 0, refit a alone; a < 0: no decrease with x at all, a flat line at the mean.
    neg_c = c < 0
    a = np.where(neg_c, (w * X * y).sum(1) / np.maximum((w * X * X).sum(1), 1e-300), a)
    c = np.where(neg_c, 0.0, c)
    neg_a = a < 0
    a, c = np.where(neg_a, 0.0, a), np.where(neg_a, my, c)
    sse = (w * (y - a[:, None] * X - c[:, None]) ** 2).sum(1)
    return a, c, sse


def _fit_weighted(lx: np.ndarray, y: np.ndarray, w: np.ndarray, b_range: tuple[float, float]):
    """(b, a', c) minimising the weighted SSE, with x already normalised (lx = log x / x0)."""
    lo, hi = math.log(b_range[0]), math.log(b_range[1])
    grid = np.exp(np.linspace(lo, hi, GRID))
    _, _, sse = _solve_ac(np.exp(-grid[:, None] * lx[None, :]), y, w)
    i = int(np.argmin(sse))

    def cost(log_b: float) -> float:
        return float(_solve_ac(np.exp(-math.exp(log_b) * lx)[None, :], y, w)[2][0])

    # golden-section search on the bracket around the best grid point (log b)
    left = math.log(grid[max(i - 1, 0)])
    right = math.log(grid[min(i + 1, GRID - 1)])
    g = (math.sqrt(5) - 1) / 2
    p, q = right - g * (right - left), left + g * (right - left)
    fp, fq = cost(p), cost(q)
    for _ in range(40):
        if fp < fq:
            right, q, fq = q, p, fp
            p = right - g * (right - left)
            fp = cost(p)
        else:
            left, p, fp = p, q, fq
            q = left + g * (right - left)
            fq = cost(q)
    best = min((fp, p), (fq, q), (float(sse[i]), math.log(grid[i])))[1]
    b = math.exp(best)
    a, c, _ = _solve_ac(np.exp(-b * lx)[None, :], y, w)
    return b, float(a[0]), float(c[0])


def fit_power_law(x: Sequence[float], y: Sequence[float], *, robust: bool = False,
                  b_range: tuple[float, float] = B_RANGE) -> PowerLaw:
    """Least-squares fit of y = a * x^-b + c (a, c >= 0, b in `b_range`); see the module docstring. ValueError
    with fewer than 3 distinct x values."""
    x, y = _check_points(x, y, "power-law fit")
    if not 0 < b_range[0] < b_range[1]:
        raise ValueError(f"b_range must be 0 < low < high, got {b_range}")
    log_x0 = float(np.log(x).mean())
    lx = np.log(x) - log_x0
    w = np.ones_like(y)
    for _ in range(20 if robust else 1):
        b, a_norm, c = _fit_weighted(lx, y, w, b_range)
        if not robust:
            break
        r = y - (a_norm * np.exp(-b * lx) + c)
        scale = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        if scale <= 1e-12 * max(1.0, float(np.abs(y).max())):
            break
        new_w = np.minimum(1.0, HUBER_K * scale / np.maximum(np.abs(r), 1e-300))
        if np.allclose(new_w, w, atol=1e-6):
            break
        w = new_w
    a = a_norm * math.exp(b * log_x0)  # a' (x / x0)^-b = a' x0^b x^-b
    rmse = float(np.sqrt(np.mean((y - (a_norm * np.exp(-b * lx) + c)) ** 2)))
    return PowerLaw(a=a, b=b, c=c, rmse=rmse, points=int(x.size))


def bootstrap_exponent(x: Sequence[float], y: Sequence[float], *, samples: int = 1000, level: float = 0.95,
                       seed: int = 0, robust: bool = False) -> dict[str, Any]:
    """Percentile interval of b over `samples` resamples (with replacement) of the points, i.e. of the runs.
    Resamples with fewer than 3 distinct x cannot be fitted and are drawn again (at most 20 x `samples` draws)."""
    x, y = _check_points(x, y, "bootstrap")
    if samples < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap needs samples >= 1 and 0 < level < 1, got {samples} and {level}")
    rng = np.random.default_rng(seed)
    bs: list[float] = []
    for _ in range(20 * samples):
        idx = rng.integers(0, x.size, x.size)
        if np.unique(x[idx]).size >= 3:
            bs.append(fit_power_law(x[idx], y[idx], robust=robust).b)
            if len(bs) == samples:
                break
    arr = np.asarray(bs)
    tail = (1 - level) / 2 * 100
    return {"level": level, "low": float(np.percentile(arr, tail)), "high": float(np.percentile(arr, 100 - tail)),
            "median": float(np.median(arr)), "samples": int(arr.size)}


def compute_frontier(points: Sequence[dict]) -> list[dict]:
    """The points ({flops, loss, ...}) no cheaper point beats: sorted by FLOPs, each with a lower loss than every
    point at or below its compute (the lower envelope of loss against compute over all runs and steps)."""
    best, frontier = math.inf, []
    for p in sorted(points, key=lambda p: (p["flops"], p["loss"])):
        if p["loss"] < best:
            best = p["loss"]
            frontier.append(p)
    return frontier


# ---------------------------------------------------------------------------------------------- the report

COLUMNS = (("size", "name"), ("layers", "num_layers"), ("hidden", "hidden_size"),
           ("params (non-emb)", "params_non_embedding"), ("params (total)", "params_total"), ("steps", "steps"),
           ("tokens", "tokens"), ("FLOPs (6ND)", "flops"), ("val loss", "val_loss"), ("GenEval", "geneval"))
ROW_KEYS = ("name", "architecture", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size",
            "params_non_embedding", "params_total", "steps", "global_batch", "samples", "tokens_per_sample",
            "tokens", "image_tokens", "flops", "val_loss", "loss_source")


def _count(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def _row(run: dict) -> dict:
    row = {k: run.get(k) for k in ROW_KEYS}
    g = run.get("geneval")
    row["geneval"] = g["overall"] if g else None
    row["geneval_tags"] = g.get("tags") if g else None
    return row


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("params_non_embedding", "params_total", "tokens"):
        return _count(value)
    if key == "flops":
        return f"{value:.3g}"
    if key in ("val_loss", "geneval"):
        return f"{value:.4f}"
    return str(value)


def table_markdown(report: dict) -> str:
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for _, k in COLUMNS) + " |" for r in report["runs"]]
    lines.append("")
    lines += [f"- {line}" for line in law_lines(report)]
    return "\n".join(lines) + "\n"


def law_lines(report: dict) -> list[str]:
    """The fitted laws in words (what `vqrae scale` prints)."""
    out = []
    fit, boot = report.get("fit"), report.get("fit_interval")
    if fit:
        line = f"{PowerLaw(**fit).formula('N')} (N: {report['params_key'].replace('params_', '')} parameters)"
        if boot:
            line += (f"; b {boot['level']:.0%} interval [{boot['low']:.4f}, {boot['high']:.4f}] over "
                     f"{boot['samples']} bootstrap resamples of the {fit['points']} runs")
        out.append(line)
    else:
        out.append(f"no parameter law: {report.get('fit_note', 'not fitted')}")
    cfit = report.get("compute_fit")
    if cfit:
        out.append(f"{PowerLaw(**cfit).formula('C')} (C: FLOPs = 6ND, fitted on the {cfit['points']} points of "
                   "the compute frontier)")
    else:
        out.append(f"no compute law: {report.get('compute_fit_note', 'not fitted')}")
    return out


def build_report(runs: Sequence[dict], *, params_key: str = "params_non_embedding", bootstrap: int = 1000,
                 seed: int = 0, robust: bool = False) -> dict:
    """Rows (sorted by size), the parameter law with b's interval, the compute frontier and its law."""
    if params_key not in ("params_non_embedding", "params_total"):
        raise ValueError(f"params_key must be params_non_embedding or params_total, got {params_key!r}")
    runs = sorted(runs, key=lambda r: (r[params_key], r["name"]))
    report: dict[str, Any] = {"runs": [_row(r) for r in runs], "params_key": params_key, "fit": None,
                              "fit_interval": None, "compute_fit": None}
    n = [r[params_key] for r in runs if r.get("val_loss") is not None]
    loss = [r["val_loss"] for r in runs if r.get("val_loss") is not None]
    try:
        report["fit"] = fit_power_law(n, loss, robust=robust).to_dict()
        if bootstrap:
            report["fit_interval"] = bootstrap_exponent(n, loss, samples=bootstrap, seed=seed, robust=robust)
    except ValueError as exc:
        report["fit_note"] = str(exc)
    points = [{"name": r["name"], **p} for r in runs for p in r.get("curve") or []]
    report["frontier"] = compute_frontier(points)
    try:
        report["compute_fit"] = fit_power_law([p["flops"] for p in report["frontier"]],
                                              [p["loss"] for p in report["frontier"]], robust=robust).to_dict()
    except ValueError as exc:
        report["compute_fit_note"] = str(exc)
    return report


def plot_report(report: dict, runs: Sequence[dict], out: Path) -> list[Path]:
    """loss_vs_params.png, loss_vs_flops.png (a curve per size, the frontier and its law), score_vs_params.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    key, rows = report["params_key"], report["runs"]
    label = "non-embedding parameters" if key == "params_non_embedding" else "parameters"
    written = []

    def save(fig, name: str) -> None:
        for ax in fig.axes:  # plain numbers on a log loss axis, not 5 x 10^0
            if ax.get_yscale() == "log":
                ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
                ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: no crowded labels
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    pts = [(r[key], r["val_loss"], r["name"]) for r in rows if r["val_loss"] is not None]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="C0", zorder=3, label="runs")
    for x, y, name in pts:
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if report["fit"]:
        law = PowerLaw(**report["fit"])
        xs = np.geomspace(min(p[0] for p in pts) / 1.5, max(p[0] for p in pts) * 1.5, 100)
        ax.plot(xs, law(xs), color="C1", label=f"{law.formula('N')}")
    ax.set(xscale="log", yscale="log", xlabel=label, ylabel="validation loss (image tokens)",
           title="loss against model size")
    ax.legend(fontsize=7)
    save(fig, "loss_vs_params.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, run in enumerate(sorted(runs, key=lambda r: r[key])):
        curve = [p for p in run.get("curve") or [] if p["flops"] > 0]
        if curve:
            ax.plot([p["flops"] for p in curve], [p["loss"] for p in curve], marker=".", color=f"C{i % 10}",
                    label=f"{run['name']} ({_count(run[key])})")
    front = [p for p in report["frontier"] if p["flops"] > 0]
    if front:
        ax.scatter([p["flops"] for p in front], [p["loss"] for p in front], s=40, facecolors="none",
                   edgecolors="k", zorder=3, label="frontier")
    if report["compute_fit"]:
        law = PowerLaw(**report["compute_fit"])
        xs = np.geomspace(front[0]["flops"], front[-1]["flops"], 100)
        ax.plot(xs, law(xs), "k--", label=law.formula("C"))
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs (6ND)", ylabel="validation loss (image tokens)",
           title="loss against compute")
    ax.legend(fontsize=7)
    save(fig, "loss_vs_flops.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    scored = [(r[key], r["geneval"], r["name"]) for r in rows if r["geneval"] is not None]
    if scored:
        ax.plot([s[0] for s in scored], [s[1] for s in scored], marker="o")
        for x, y, name in scored:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    else:
        ax.text(0.5, 0.5, "no GenEval scores", ha="center", transform=ax.transAxes)
    ax.set(xscale="log", xlabel=label, ylabel="GenEval-style overall", title="score against model size",
           ylim=(0, 1))  # a score can be 0: linear y
    save(fig, "score_vs_params.png")
    return written


def write_report(runs: Sequence[dict], out: str | Path, **kwargs) -> dict:
    """build_report + scaling.json, scaling.md and the plots in `out`. Returns the report (with `files`)."""
    if not runs:
        raise ValueError("no finished runs to report on")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(runs, **kwargs)
    (out / "scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "scaling.md").write_text(table_markdown(report))
    report["files"] = [str(p) for p in [out / "scaling.json", out / "scaling.md", *plot_report(report, runs, out)]]
    return report


# -------------------------------------------------------------------------------------------- run records

RESULT = "result.json"


def read_run(folder: str | Path) -> dict | None:
    """A size's record (FOLDER/result.json), None when it has not finished; ValueError naming a broken file."""
    path = Path(folder) / RESULT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg}); delete it to redo that size") from None
    missing = [k for k in ("name", "params_non_embedding", "params_total", "val_loss") if k not in record]
    if missing:
        raise ValueError(f"{path}: not a scaling run record (no {', '.join(missing)})")
    return record


def run_record(train_dir: str | Path, *, name: str, counts: dict[str, int], steps: int, global_batch: int,
               tokens_per_sample: float, image_tokens_per_sample: float, geneval: dict | None) -> dict:
    """A finished run's numbers from its training folder's metrics.jsonl: the validation loss on image tokens at
    every evaluation (`eval/loss`; without a ShapesWorld source there is none, and the logged training
    `image_loss` stands in, said so in `loss_source`), tokens and FLOPs at each of those steps."""
    from vqrae.train.metrics import read_metrics

    metrics = read_metrics(Path(train_dir) / "metrics.jsonl")
    points = [(r["step"], r["eval/loss"]) for r in metrics if "eval/loss" in r]
    source = "eval/loss"
    if not points:
        points = [(r["step"], r["image_loss"]) for r in metrics if "image_loss" in r]
        source = "train image_loss (no validation source)"
    if not points:
        raise ValueError(f"{Path(train_dir) / 'metrics.jsonl'}: no eval/loss or image_loss records")
    per_step = global_batch * tokens_per_sample
    curve = [{"step": s, "tokens": s * per_step, "flops": 6.0 * counts["params_compute"] * s * per_step, "loss": v}
             for s, v in points]
    speeds = sorted(r["samples_per_s"] for r in metrics if "samples_per_s" in r)
    return {"name": name, **counts, "steps": steps, "global_batch": global_batch, "samples": steps * global_batch,
            "tokens_per_sample": tokens_per_sample, "tokens": steps * per_step,
            "image_tokens": steps * global_batch * image_tokens_per_sample,
            "flops": 6.0 * counts["params_compute"] * steps * per_step, "val_loss": curve[-1]["loss"],
            "loss_source": source, "curve": curve, "geneval": geneval,
            "samples_per_s": speeds[len(speeds) // 2] if speeds else None}
