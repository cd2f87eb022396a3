"""`vqrae bench zero3-load`: per-process memory of loading a unified model for training, ZeRO-3 vs ZeRO-0.

Builds a unified model with a random LLM big enough to see (default Qwen2 h=1024 x 8 layers: about 367 MB in
fp32), saves it, then starts 2 processes (torchrun, gloo, CPU) per setting. In each process:
`UnifiedModel.from_pretrained` inside `vqrae.train.zero3.partitioned_init(ds_config)`, then `deepspeed.initialize`.
With ZeRO-0 every process holds the whole model; with ZeRO-3 transformers builds it inside `deepspeed.zero.Init`
and copies the checkpoint in one module at a time (rank 0 reads it), so each process holds only its partition.

Printed per rank: the parameter bytes it holds, the peak of its private (anonymous) memory above its state before
loading (sampled), and ru_maxrss (which also counts the checkpoint's file pages, shared and droppable: rank 0 of
ZeRO-0 maps the checkpoint and shows almost no private memory until something writes to it). Each setting runs
with glibc's default allocator and with a fixed mmap threshold (see ALLOCATORS): the default keeps the freed
full-size tensors of zero.Init resident, which is what a user sees unless they set it (or use jemalloc/tcmalloc).
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
import threading
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


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class AnonPeak(threading.Thread):
    """The peak of this process's private (anonymous) resident memory, sampled every 2 ms. ru_maxrss also counts
    the checkpoint's file pages, which the kernel shares between processes and can drop at any time; private memory
    is what each process really holds."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = _status_mb("RssAnon")
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, _status_mb("RssAnon"))

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak, _status_mb("RssAnon"))


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
    before, anon_before = _peak_mb(), _status_mb("RssAnon")
    sampler = AnonPeak()
    sampler.start()
    t0 = time.perf_counter()
    with partitioned_init(cfg):
        model = UnifiedModel.from_pretrained(folder, dtype=torch.float32, device="cpu")
    load_s = time.perf_counter() - t0
    after_load = _peak_mb()
    deepspeed.initialize(model=model, config=cfg)  # ZeRO-0 keeps everything; ZeRO-3 was partitioned at load
    after_init = _peak_mb()
    anon_peak = sampler.stop()
    anon_after = _status_mb("RssAnon") - anon_before
    local = sum(local_numel(p) * p.element_size() for p in model.parameters()) / 2**20
    total = sum(int(getattr(p, "ds_numel", p.numel())) * p.element_size() for p in model.parameters()) / 2**20
    Path(out).write_text(json.dumps({
        "rank": dist.rank, "stage": stage, "before_mb": before, "load_peak_mb": after_load - before,
        "init_peak_mb": after_init - before, "anon_peak_mb": anon_peak - anon_before, "anon_after_mb": anon_after,
        "local_param_mb": local, "total_param_mb": total, "load_s": load_s,
    }))
    distributed.barrier()
    distributed.destroy()


def build_model(folder: Path, hidden: int, layers: int) -> None:
    from vqrae.unified_model.testing import tiny_unified_model

    model = tiny_unified_model(seed=0, llm_kwargs={"hidden_size": hidden, "num_layers": layers,
                                                   "num_heads": max(1, hidden // 64),
                                                   "intermediate_size": int(hidden * 2.75)})
    model.save_pretrained(folder)


# glibc's malloc serves blocks below a threshold that grows with the largest block freed (up to 32 MB) from its heap,
# which it rarely returns: the full-size tensors that zero.Init creates and partitions one module at a time leave
# freed holes that still count as resident. A fixed threshold returns every large block to the OS on free.
ALLOCATORS = {"glibc default": {}, "MALLOC_MMAP_THRESHOLD_=65536": {"MALLOC_MMAP_THRESHOLD_": "65536"}}


def run_ranks(folder: str, stage: int, work: Path, extra_env: dict[str, str]) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", **extra_env}
    outs = [work / f"stage{stage}-rank{r}.json" for r in range(WORLD)]
    # Each rank writes its own file: torchrun sets RANK, the worker adds it to the name.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_port",
           str(_free_port()), "-m", "vqrae.eval.bench_zero3", "--worker", str(work / f"stage{stage}-rank{{rank}}.json"),
           "--stage", str(stage), "--model", folder]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        errors = [line for line in (res.stdout + res.stderr).splitlines() if "Error" in line]
        tail = "\n".join(errors[-8:] or (res.stdout + res.stderr).splitlines()[-15:])
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
        results = {name: run_ranks(folder, 0, work, env) + run_ranks(folder, 3, work, env)
                   for name, env in ALLOCATORS.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = next(iter(results.values()))
    print(f"model: {first[0]['total_param_mb']:.0f} MB of parameters; {WORLD} processes, CPU")
    print("memory above each process's state before loading; private = anonymous resident memory (sampled), "
          "RSS = ru_maxrss (also counts the checkpoint's shared file pages)")
    for name, rows in results.items():
        print(f"\nallocator: {name}")
        print(f"{'mode':>6} {'rank':>5} {'params held MB':>15} {'peak private MB':>16} {'private after MB':>17} "
              f"{'peak RSS MB':>12} {'load s':>7}")
        for r in rows:
            print(f"{'ZeRO-' + str(r['stage']):>6} {r['rank']:>5} {r['local_param_mb']:>15.0f} "
                  f"{r['anon_peak_mb']:>16.0f} {r['anon_after_mb']:>17.0f} {r['init_peak_mb']:>12.0f} "
                  f"{r['load_s']:>7.1f}")

        def ratio(key: str, rows=rows) -> float:
            worst = {s: max(r[key] for r in rows if r["stage"] == s) for s in (0, 3)}
            return worst[3] / max(worst[0], 1e-9)

        print(f"ZeRO-3 / ZeRO-0, worst rank: parameters held {ratio('local_param_mb'):.2f}x, peak private memory "
              f"{ratio('anon_peak_mb'):.2f}x, private memory after loading {ratio('anon_after_mb'):.2f}x, "
              f"peak RSS {ratio('init_peak_mb'):.2f}x")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
