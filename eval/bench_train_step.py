"""`vqrae bench train-step`: the training engine's step for the unified model against a bare hand-written step of
the same model on the same batches, in one run.

- bare: `stage.loss(model, batch, step)` (the stage's own forward and loss), `loss.backward()`,
  `clip_grad_norm_`, AdamW `step`, `zero_grad`: the floor of any training loop for this model;
- engine: `Engine._train_step` with the engine's PlainBackend, exactly as `vqrae train` runs it, minus the data
  loader: both paths read the same pre-collated micro-batches (CPU tensors, moved to the device inside the step),
  so only what the engine adds per step (target counting, metric reduction and `.tolist()`, the gradient-norm read,
  the lr schedule, autocast, mode switching) separates them.

Both paths train the same module (each with its own AdamW and state, both built from the stage's parameter groups),
so they touch the same memory. Steps run in blocks, bare and engine alternating (and swapping which goes first
every round) after a few untimed warm-up steps of each, so the drift of a shared machine reaches both alike; each
block is timed as a whole (with a device sync at both ends on CUDA, so asynchronous execution is credited to the
path that allows it), and the reported step time is the median over blocks; the overhead is
median(engine) / median(bare) - 1 (goal <= 10%). Also reported: the median of the per-round ratios, and the same
overhead in process CPU time, which a busy shared machine (other processes taking the cores away) does not blur
the way it blurs wall-clock time. Tokens/s counts the non-pad tokens of the timed micro-batches (image slots and
codes included).

Where an overhead comes from: each piece of work the engine's step (and `train()`'s loop around it) does beyond
the bare step is also timed alone (`breakdown_ms` in the JSON).

Without `--model`, a random unified model is built (Qwen2 h=256 x 4 layers, 64 px VQRAE: 8x8 = 64 image tokens,
1024 codes) and saved to a temporary folder that the stage loads with `init=`, like any trained one.
The engine is set up through its own (private) steps, `Engine._setup` and the model/backend lines of `Engine._run`,
and driven through `Engine._train_step`: a change there must be mirrored in `Paths`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

GOAL_PCT = 10.0  # the engine's step may cost at most this much more than the bare step
STAGES = ("unified-sft", "unified-gen", "unified-align")
# --task -> the stage's data sources (ShapesWorld, rendered at the model's image size); `mixed` is the SFT mixture
# of configs/shapes-tiny/unified-sft.yaml (weights 3:1:1:3).
TASKS = {
    "t2i": [("t2i", 1.0)],
    "conversation": [("conversation", 1.0)],
    "mixed": [("conversation", 3.0), ("describe", 1.0), ("draw", 1.0), ("t2i", 3.0)],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="a unified model folder (default: build a random one)")
    p.add_argument("--stage", default="unified-sft", choices=STAGES, help="the stage whose loss and trainable "
                   "parameters the step uses (default unified-sft)")
    p.add_argument("--task", default="mixed", choices=sorted(TASKS), help="training data: t2i, conversation, or "
                   "mixed (the SFT mixture of conversation, describe, draw and t2i records; default)")
    p.add_argument("--steps", type=int, default=24, help="timed steps per path (default 24)")
    p.add_argument("--rounds", type=int, default=12, help="timed blocks per path, bare and engine alternating "
                   "(default 12; steps are split evenly over them)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per path before timing (default 2)")
    p.add_argument("--batch-size", type=int, default=4, help="micro-batch size (default 4)")
    p.add_argument("--batches", type=int, default=4, help="distinct pre-collated micro-batches, cycled (default 4)")
    p.add_argument("--hidden-size", type=int, default=256, help="LLM width of the random model (default 256)")
    p.add_argument("--layers", type=int, default=4, help="LLM depth of the random model (default 4)")
    p.add_argument("--heads", type=int, default=4, help="attention heads of the random model (default 4)")
    p.add_argument("--image-size", type=int, default=64, help="VQRAE image size of the random model, a multiple "
                   "of its patch 8 (default 64: 64 image tokens)")
    p.add_argument("--codebook-size", type=int, default=1024, help="codes of the random model (default 1024)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="default cpu")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="the engine's precision setting; the bare step uses the same autocast (default auto)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: steadier than 2 on a shared 2-core machine)")
    p.add_argument("--out", default="runs/bench/train-step.json", help="JSON with the numbers "
                   "(default runs/bench/train-step.json)")


def _check_args(args: argparse.Namespace) -> None:
    for name in ("steps", "rounds", "batch_size", "batches", "hidden_size", "layers", "heads", "image_size",
                 "codebook_size", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if args.rounds > args.steps:
        raise ValueError(f"--rounds ({args.rounds}) must not exceed --steps ({args.steps}): a block is >= 1 step")
    if args.stage == "unified-align" and args.task == "t2i":
        raise ValueError("--stage unified-align trains the projector only, which text-to-image records never reach: "
                         "choose --task conversation or mixed")
    if args.image_size % 8:
        raise ValueError(f"--image-size must be a multiple of the VQRAE patch 8, got {args.image_size}")
    if args.hidden_size % args.heads:
        raise ValueError(f"--hidden-size ({args.hidden_size}) must be divisible by --heads ({args.heads})")
    if args.model is not None and not (Path(args.model) / "config.json").is_file():
        raise FileNotFoundError(f"--model {args.model} is not a unified model folder (no config.json in it)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")


def build_model(folder: Path, args: argparse.Namespace) -> None:
    from vqrae.unified_model.testing import tiny_unified_model

    model = tiny_unified_model(
        seed=0, image_size=args.image_size, vqrae_overrides={"codebook_size": args.codebook_size},
        llm_kwargs={"hidden_size": args.hidden_size, "num_layers": args.layers, "num_heads": args.heads},
    )
    model.save_pretrained(folder)


def make_stage(args: argparse.Namespace, model: str, work: Path):
    """The stage as `vqrae train` would build it from a config, starting from `model` (its `init=`)."""
    from vqrae.train import load_config
    from vqrae.train.stages import get_stage

    n = args.batch_size * args.batches
    data = ", ".join(f"{{task: {task}, data: shapes, num: {n}, weight: {w}}}" for task, w in TASKS[args.task])
    cls = get_stage(args.stage)
    cfg = load_config(cls.config_class, None, [
        f"init={model}", f"data=[{data}]", f"batch_size={args.batch_size}", f"samples={n}",
        # the schedule spans every engine step this bench takes, as in a real run of that length
        f"max_steps={args.warmup + args.steps}", f"output_dir={work / 'out'}", f"cache_dir={work / 'cache'}",
        "val_num=0", "save_every=0", f"log_every={args.warmup + args.steps}", "resume=never",
        f"device={args.device}", f"precision={args.precision}",
    ])
    return cls(cfg)


class Paths:
    """The engine (set up as `Engine.run` does it, without the data loader) and the bare loop on one module."""

    def __init__(self, stage, scope: contextlib.ExitStack, num_batches: int):
        from vqrae.train.backends import PlainBackend
        from vqrae.train.data import micro_batches
        from vqrae.train.engine import Engine, seed_everything
        from vqrae.train.stage import check_param_groups

        cfg = stage.config
        engine = self.engine = Engine(stage)
        engine._scope = scope  # where _setup enters the process-wide switches it restores at the end
        engine._setup()
        seed_everything(cfg.seed)
        module = stage.build_model()
        groups = stage.param_groups(module)
        check_param_groups(module, groups)
        engine.group_names = [str(g.get("name", f"group{i}")) for i, g in enumerate(groups)]
        engine.backend = PlainBackend(module, groups, cfg, engine.device, engine.bf16)
        dataset = stage.train_dataset()
        loader = micro_batches(dataset, cfg.batch_size, stage.collate, seed=cfg.seed, shuffle=stage.shuffle_data)
        self.batches = list(itertools.islice(loader, num_batches))
        self.stage, self.cfg, self.module, self.device = stage, cfg, module, engine.device
        self.bf16 = engine.bf16
        self.batch_tokens = [int(b["attention_mask"].sum()) for b in self.batches]  # non-pad tokens

        # The bare loop: its own AdamW (same groups and settings as the engine's), no schedule, no metrics.
        self.bare_optimizer = torch.optim.AdamW(stage.param_groups(module), lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                                eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        self.params = [p for g in self.bare_optimizer.param_groups for p in g["params"]]
        self.max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        self.feed = {"bare": itertools.cycle(self.batches), "engine": itertools.cycle(self.batches)}
        self.step = {"bare": 0, "engine": 0}
        module.train()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def bare_step(self) -> None:
        batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in next(self.feed["bare"]).items()}
        with self.autocast():
            loss, _ = self.stage.loss(self.module, batch, self.step["bare"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.bare_optimizer.step()
        self.bare_optimizer.zero_grad(set_to_none=True)
        self.step["bare"] += 1

    def engine_step(self) -> None:
        self.engine._train_step(self.feed["engine"], self.step["engine"])
        self.step["engine"] += 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _block(step: Callable[[], None], n: int, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds per step over a block of `n` steps. CPU time leaves out the time other
    processes of a shared machine took the cores away; wall time is what a run takes (and counts device waits)."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def _timed_alone(fn: Callable[[], object], device: torch.device, reps: int = 50) -> float:
    """Median seconds of one call of `fn`, repeated alone (device-synced)."""
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def breakdown(paths: Paths) -> dict[str, float]:
    """Seconds per step of each piece of work the engine's step does and the bare one does not, each timed alone
    on the first micro-batch: the metric reduction as `Engine._train_step` writes it, on the step's real loss and
    metrics; the lr schedule as a throwaway scheduler over the same groups (the timed runs keep their own); and the
    per-step bookkeeping of `Engine.run`'s loop outside `_train_step` (lrs, progress bar), which `train()` pays
    too."""
    from tqdm import tqdm

    from vqrae.train.schedules import build_scheduler

    engine, stage, dev, cfg = paths.engine, paths.stage, paths.device, paths.cfg
    batch = paths.batches[0]
    with torch.no_grad(), paths.autocast():
        loss, metrics = stage.loss(paths.module, stage.to_device(batch), 0)

    def reduce_metrics():
        sums = {}
        for k, v in {"loss": loss, **metrics}.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            sums[k] = sums.get(k, 0.0) + v.to(dev)
        keys = sorted(sums)
        return dict(zip(keys, (torch.stack([sums[k] for k in keys]) / 1).tolist()))

    def autocast():
        with engine.backend.autocast():
            pass

    spare = torch.optim.AdamW(stage.param_groups(paths.module), lr=cfg.lr)
    scheduler = build_scheduler(spare, cfg.schedule, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    norm = torch.ones((), device=dev)  # clip_grad_norm_'s result: a 0-d tensor on the device
    bar = tqdm(total=10**9, file=io.StringIO(), dynamic_ncols=True)
    values = reduce_metrics()

    def loop_bookkeeping():
        lrs = engine.backend.lrs()
        bar.update(1)
        bar.set_postfix(loss=f"{values['loss']:.4g}", lr=f"{lrs[0]:.3g}", samples_s=f"{1.0:.1f}")

    pieces = {
        "model.train()": paths.module.train,
        "target counts (_micro_batch_scales)": lambda: engine._micro_batch_scales([batch]),
        "batch to device (move_batch)": lambda: stage.to_device(batch),
        "metric reduction + .tolist()": reduce_metrics,
        "grad norm float()": lambda: float(norm),
        "lr scheduler.step()": scheduler.step,
        "autocast context": autocast,
        "run loop: lrs + progress bar (train())": loop_bookkeeping,
    }
    with warnings.catch_warnings():  # the throwaway scheduler steps an optimizer that never steps
        warnings.simplefilter("ignore", UserWarning)
        try:
            return {name: _timed_alone(fn, dev) for name, fn in pieces.items()}
        finally:
            bar.close()


def measure(paths: Paths, steps: int, rounds: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Per-step seconds (wall and CPU) of every timed block, per path; blocks alternate and swap order every
    round, and a round's two blocks run the same micro-batches."""
    order = [("bare", paths.bare_step), ("engine", paths.engine_step)]
    for _, step in order:
        for _ in range(warmup):
            step()
    blocks: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name, _ in order}
    sizes = [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]
    for r, n in enumerate(sizes):
        for name, step in order if r % 2 == 0 else order[::-1]:
            wall, cpu = _block(step, n, paths.device)
            blocks[name]["wall"].append(wall)
            blocks[name]["cpu"].append(cpu)
    return blocks


def run(args: argparse.Namespace) -> dict:
    """Build (or take) the model, set up both paths, time them and the engine's pieces: the JSON record."""
    _check_args(args)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="vqrae-train-step-"))
    try:
        model = args.model
        if model is None:
            model = str(work / "model")
            print(f"building a random unified model (Qwen2 h={args.hidden_size} x {args.layers} layers, "
                  f"{args.image_size} px VQRAE, {args.codebook_size} codes) in {model}")
            build_model(Path(model), args)
        stage = make_stage(args, model, work)
        with contextlib.ExitStack() as scope:
            paths = Paths(stage, scope, args.batches)
            blocks = measure(paths, args.steps, args.rounds, args.warmup)
            pieces = breakdown(paths)
            info = {"device": str(paths.device), "bf16": paths.bf16, "threads": torch.get_num_threads(),
                    "parameters": sum(p.numel() for p in paths.module.parameters()),
                    "trainable_parameters": sum(p.numel() for p in paths.params)}
            # the micro-batches the timed steps ran (both paths alike), after the warm-up steps
            counts = paths.batch_tokens
            tokens = statistics.fmean(counts[(args.warmup + i) % len(counts)] for i in range(args.steps))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v["wall"]) for k, v in blocks.items()}
    cpu = {k: statistics.median(v["cpu"]) for k, v in blocks.items()}
    if not all(math.isfinite(v) and v > 0 for v in (*med.values(), *cpu.values(), tokens)):
        raise RuntimeError(f"non-finite or zero measurements: median step times {med}, {tokens} tokens per step")
    overhead = 100 * (med["engine"] / med["bare"] - 1)
    # The same ratio per round (both paths' blocks of a round ran the same batches, back to back): steadier when
    # the machine's speed drifts or the batches differ in length.
    walls = zip(blocks["engine"]["wall"], blocks["bare"]["wall"])
    paired = 100 * (statistics.median(e / b for e, b in walls) - 1)
    return {
        "benchmark": "train-step", "model": args.model or "random", "stage": args.stage, "task": args.task,
        **info, "batch_size": args.batch_size, "steps_per_path": args.steps, "rounds": args.rounds,
        "warmup_steps": args.warmup, "tokens_per_step": tokens,
        # how busy the machine was (1-minute load average before and after, and its cores): wall-clock times on an
        # oversubscribed machine are noisy; process CPU time is not (with 1 thread)
        "load_average": [load_before, os.getloadavg()[0]], "cpu_count": os.cpu_count(),
        **{name: {"median_step_s": med[name], "min_step_s": min(blocks[name]["wall"]),
                  "tokens_per_s": tokens / med[name], "median_cpu_step_s": cpu[name],
                  "block_step_s": blocks[name]["wall"], "block_cpu_step_s": blocks[name]["cpu"]}
           for name in ("bare", "engine")},
        "overhead_pct": overhead, "paired_overhead_pct": paired,
        "cpu_overhead_pct": 100 * (cpu["engine"] / cpu["bare"] - 1), "goal_pct": GOAL_PCT,
        "goal_met": overhead <= GOAL_PCT,
        "breakdown_ms": {k: 1000 * v for k, v in pieces.items()},
        "breakdown_pct_of_bare": 100 * sum(pieces.values()) / med["bare"],
    }


def report(r: dict) -> None:
    print(f"train step, {r['stage']} on {r['task']} data: {r['parameters'] / 1e6:.2f}M parameters "
          f"({r['trainable_parameters'] / 1e6:.2f}M trainable), batch {r['batch_size']} "
          f"({r['tokens_per_step']:.0f} non-pad tokens per step), {r['device']}{' bf16' if r['bf16'] else ''}, "
          f"{r['threads']} thread(s); median of {r['rounds']} interleaved blocks, {r['steps_per_path']} steps per path")
    print(f"{'path':<36}{'median ms/step':>15}{'min ms/step':>13}{'tokens/s':>11}{'CPU ms/step':>13}")
    for name, label in (("bare", "bare (loss, backward, clip, AdamW)"), ("engine", "engine (Engine._train_step)")):
        p = r[name]
        print(f"{label:<36}{1000 * p['median_step_s']:>15.2f}{1000 * p['min_step_s']:>13.2f}"
              f"{p['tokens_per_s']:>11.0f}{1000 * p['median_cpu_step_s']:>13.2f}")
    print(f"engine overhead (median engine / median bare - 1): {r['overhead_pct']:+.1f}% "
          f"(goal <= {r['goal_pct']:.0f}%: {'met' if r['goal_met'] else 'NOT met'}); median of per-round ratios: "
          f"{r['paired_overhead_pct']:+.1f}%; in process CPU time: {r['cpu_overhead_pct']:+.1f}%")
    load, cores = max(r["load_average"]), r["cpu_count"] or 1
    if r["device"] == "cpu" and load > cores:
        print(f"note: the machine was busy (load average up to {load:.1f} on {cores} cores): wall-clock times are "
              f"noisy here; the CPU-time ratio ({r['cpu_overhead_pct']:+.1f}%) is the steadier measure")
    bare_ms = 1000 * r["bare"]["median_step_s"]
    print(f"engine-only work per step, each timed alone: {r['breakdown_pct_of_bare']:.2f}% of the bare step in all")
    for name, ms in r["breakdown_ms"].items():
        print(f"  {name:<40}{ms:>9.3f} ms{100 * ms / bare_ms:>8.3f}%")


def main(args: argparse.Namespace) -> int:
    result = run(args)
    report(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
