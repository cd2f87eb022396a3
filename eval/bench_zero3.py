"""`vqrae bench zero3-load`: per-process peak memory of loading a unified model for training, ZeRO-3 vs ZeRO-0.

Builds a unified model with a random LLM big enough to see (default Qwen2 h=1024 x 8 layers: about 115M
parameters, 460 MB in fp32), saves it, then starts 2 processes (torchrun, gloo, CPU) twice. In each process:
`UnifiedModel.from_pretrained` inside `vqrae.train.zero3.partitioned_init(ds_config)`, then `deepspeed.initialize`.
With ZeRO-0 every process materialises the whole model; with ZeRO-3 transformers builds it inside
`deepspeed.zero.Init`, so each process only ever holds its partition. Printed: each rank's peak resident memory
above its state before loading (ru_maxrss), the parameter bytes it holds, and the ratio ZeRO-3 / ZeRO-0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORLD = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="a saved unified model folder (default: build a random one)")
    p.add_argument("--hidden", type=int, default=1024, help="LLM width of the random model (default 1024)")
    p.add_argument("--layers", type=int, default=8, help="LLM depth of the random model (default 8)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one rank, write JSON here
    p.add_argument("--stage", type=int, default=3, help=argparse.SUPPRESS)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def ds_config(stage: int) -> dict:
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization":
            {"stage": stage}, "bf16": {"enabled": False}, "steps_per_print": 10**9}


def worker(folder: str, stage: int, out: str) -> None:
    """One rank: load under the stage's init window, hand the model to DeepSpeed, report memory."""
    import deepspeed
    import torch

    from vqrae.train import distributed
    from vqrae.train.zero3 import local_numel, partitioned_init
    from vqrae.unified_model import UnifiedModel

    dist = distributed.init_deepspeed_distributed()
    torch.set_num_threads(1)
    cfg = ds_config(stage)
    distributed.barrier()
    before = _peak_mb()
    t0 = time.perf_counter()
    with partitioned_init(cfg):
        model = UnifiedModel.from_pretrained(folder, dtype=torch.float32, device="cpu")
    load_s = time.perf_counter() - t0
    after_load = _peak_mb()
    deepspeed.initialize(model=model, config=cfg)  # ZeRO-0 keeps everything; ZeRO-3 was partitioned at load
    after_init = _peak_mb()
    local = sum(local_numel(p) * p.element_size() for p in model.parameters()) / 2**20
    total = sum(int(getattr(p, "ds_numel", p.numel())) * p.element_size() for p in model.parameters()) / 2**20
    Path(out).write_text(json.dumps({
        "rank": dist.rank, "stage": stage, "before_mb": before, "load_peak_mb": after_load - before,
        "init_peak_mb": after_init - before, "local_param_mb": local, "total_param_mb": total, "load_s": load_s,
    }))
    distributed.barrier()
    distributed.destroy()


def build_model(folder: Path, hidden: int, layers: int) -> None:
    from vqrae.unified_model.testing import tiny_unified_model

    model = tiny_unified_model(seed=0, llm_kwargs={"hidden_size": hidden, "num_layers": layers,
                                                   "num_heads": max(1, hidden // 64),
                                                   "intermediate_size": int(hidden * 2.75)})
    model.save_pretrained(folder)


def run_ranks(folder: str, stage: int, work: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    outs = [work / f"stage{stage}-rank{r}.json" for r in range(WORLD)]
    # Each rank writes its own file: torchrun sets RANK, the worker adds it to the name.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port",
           str(_free_port()), "-m", "vqrae.eval.bench_zero3", "--worker", str(work / f"stage{stage}-rank{{rank}}.json"),
           "--stage", str(stage), "--model", folder]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"ZeRO-{stage} load run failed (exit {res.returncode}):\n{tail}")
    return [json.loads(p.read_text()) for p in outs]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(args: argparse.Namespace) -> int:
    if args.worker:
        worker(args.model, args.stage, args.worker.replace("{rank}", os.environ.get("RANK", "0")))
        return 0
    work = Path(tempfile.mkdtemp(prefix="vqrae-zero3-"))
    try:
        folder = args.model
        if folder is None:
            folder = str(work / "model")
            print(f"building a random unified model (LLM h={args.hidden} x {args.layers} layers) in {folder}")
            build_model(Path(folder), args.hidden, args.layers)
        rows = run_ranks(folder, 0, work) + run_ranks(folder, 3, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"model: {rows[0]['total_param_mb']:.0f} MB of parameters; {WORLD} processes, CPU")
    print(f"{'mode':>6} {'rank':>5} {'params held MB':>15} {'peak after load MB':>19} {'peak after init MB':>19}"
          f" {'load s':>7}")
    for r in rows:
        print(f"{'ZeRO-' + str(r['stage']):>6} {r['rank']:>5} {r['local_param_mb']:>15.0f} {r['load_peak_mb']:>19.0f}"
              f" {r['init_peak_mb']:>19.0f} {r['load_s']:>7.1f}")
    peak = {s: max(r["init_peak_mb"] for r in rows if r["stage"] == s) for s in (0, 3)}
    held = {s: max(r["local_param_mb"] for r in rows if r["stage"] == s) for s in (0, 3)}
    print(f"ZeRO-3 / ZeRO-0 per-rank peak memory (load + initialize): {peak[3] / max(peak[0], 1e-9):.2f}x; "
          f"parameters held: {held[3] / max(held[0], 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
