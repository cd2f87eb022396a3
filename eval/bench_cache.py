"""`vqrae bench cache`: a unified stage's step with the VQRAE's codes / features cached on disk against the same step
recomputing them from pixels (same model, same samples, interleaved, medians).

The step timed is what the engine does per micro-batch: collate the samples (ShapesWorld rendered on the fly in both
arms, so only the encoder's work differs), the stage's loss (forward), backward. The first round builds the caches
(their one-off cost is printed apart) and is not timed.

    vqrae bench cache --model runs/quickstart/unified-align/final --task t2i
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

TASKS = ("t2i", "conversation", "describe", "draw")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a unified model folder (the stage starts from it: init=)")
    p.add_argument("--task", default="t2i", choices=TASKS, help="the records of the batches (default t2i)")
    p.add_argument("--stage", default="unified-sft", help="the stage whose step is timed (default unified-sft)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5, help="timed steps per arm (default 5)")
    p.add_argument("--num", type=int, default=256, help="ShapesWorld images of the source (default 256)")
    p.add_argument("--cache-dir", default="runs/bench/cache", help="where the caches are built")
    p.add_argument("--out", default="runs/bench/cache.json", help="the numbers as JSON")


def _stage(args, cache: bool):
    import torch

    from vqrae.train import load_config
    from vqrae.train.stages import get_stage

    cls = get_stage(args.stage)
    cfg = load_config(cls.config_class, None, [
        f"init={args.model}", f"output_dir={Path(args.cache_dir) / 'run'}", f"cache={str(cache).lower()}",
        f"cache_dir={args.cache_dir}", f"data=[{{task: {args.task}, data: shapes, num: {args.num}}}]",
        f"batch_size={args.batch_size}", "max_steps=1", "val_num=0", f"samples={(args.rounds + 1) * args.batch_size}"])
    stage = cls(cfg)
    torch.manual_seed(0)
    model = stage.build_model()
    model.train()
    t0 = time.perf_counter()
    data = stage.train_dataset()
    return stage, model, data, time.perf_counter() - t0


def main(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.batch_size < 1:
        raise ValueError("--rounds and --batch-size must be >= 1")
    if args.num < (args.rounds + 1) * args.batch_size:
        raise ValueError(f"--num {args.num} is fewer than (rounds + 1) x batch size samples")
    arms = {"cached": _stage(args, True), "recomputed": _stage(args, False)}
    times: dict[str, list[float]] = {k: [] for k in arms}
    tokens = 0
    for r in range(args.rounds + 1):
        for name, (stage, model, data, _) in (arms.items() if r % 2 else reversed(arms.items())):
            t0 = time.perf_counter()
            batch = stage.collate([data[i] for i in range(r * args.batch_size, (r + 1) * args.batch_size)])
            loss, _ = stage.loss(model, stage.to_device(batch), r)
            loss.backward()
            model.zero_grad(set_to_none=True)
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)
                tokens += int(batch["attention_mask"].sum()) if name == "cached" else 0
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"task": args.task, "stage": args.stage, "batch_size": args.batch_size, "rounds": args.rounds,
              "step_s": med, "speedup": med["recomputed"] / med["cached"],
              "cache_build_s": arms["cached"][3], "tokens_per_step": tokens / args.rounds}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.stage} step on {args.task} batches of {args.batch_size} (collate + forward + backward, median of "
          f"{args.rounds}): cached {med['cached']:.3f} s, recomputed {med['recomputed']:.3f} s -> "
          f"x{result['speedup']:.2f} with the cache; building it took {result['cache_build_s']:.1f} s once. "
          f"Wrote {out}")
    return 0
