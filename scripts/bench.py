"""`vqrae bench NAME`: performance benchmarks that print ratios against a peer measured in the same run."""

from __future__ import annotations

import argparse
import importlib

# name -> (module with add_arguments(parser) and main(args) -> int, one-line help)
BENCHMARKS = {
    "quantizer": ("vqrae.eval.bench_quantizer", "our SimVQ vs vector-quantize-pytorch's SimVQ, and vs the bare matmul"),
    "generate": ("vqrae.eval.bench_generate", "our image sampler vs Hugging Face generate() with guidance_scale"),
    "zero3-load": ("vqrae.eval.bench_zero3", "per-process peak memory loading a unified model: ZeRO-3 vs ZeRO-0"),
    "model-size": ("vqrae.eval.model_size", "parameters and ZeRO memory per GPU of a config's model (meta device)"),
    "cache": ("vqrae.eval.bench_cache", "a unified stage's step with cached codes/features vs recomputing them"),
    "train-step": ("vqrae.eval.bench_train_step", "the engine's unified-model training step vs a bare step"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: time and memory ratios against a peer in the same run",
                       description="Benchmarks print a table and the ratios ours/peer, measured in one run.")
    bench_sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        bp = bench_sub.add_parser(name, help=help_text, description=help_text)
        bp.set_defaults(func=_runner(module), _bench_module=module)
        try:
            importlib.import_module(module).add_arguments(bp)
        except ImportError:
            continue  # a benchmark whose module is missing reports that when run


def _runner(module: str):
    def run(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"benchmark module {module} cannot be imported: {exc}") from None
        return mod.main(args)

    return run
