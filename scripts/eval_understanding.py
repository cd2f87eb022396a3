"""`vqrae eval understanding`: lmms-eval's understanding benchmarks (and ShapesWorld VQA) on local datasets."""

from __future__ import annotations

import argparse

DEFAULT_TASKS = "mme,pope,gqa,textvqa_val,mmbench_en_dev,seedbench,mmmu_val,ai2d,scienceqa_img"


def register_understanding(suites: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `understanding` suite to the `vqrae eval` sub-parsers."""
    u = suites.add_parser(
        "understanding", help="VQA benchmarks through lmms-eval (MME, POPE, GQA, ..., ShapesWorld VQA), offline",
        description="Run lmms-eval in process with the vqrae model adapter. Each task reads its dataset from "
        "DATA_ROOT/<task>/: the task's Hugging Face dataset saved with save_to_disk as a DatasetDict (its own "
        "columns and test split); shapesworld_vqa reads the output of `vqrae data shapes --out DATA_ROOT/"
        "shapesworld_vqa`. Metrics are lmms-eval's. Writes results.json, results.md and samples_<task>.jsonl.")
    u.add_argument("--model", required=True, help="UnifiedModel folder (save_pretrained)")
    u.add_argument("--tasks", default=DEFAULT_TASKS,
                   help=f"comma-separated lmms-eval tasks and/or shapesworld_vqa (default {DEFAULT_TASKS})")
    u.add_argument("--data-root", required=True, help="folder with one DatasetDict folder per task")
    u.add_argument("--limit", type=float, default=None,
                   help="at most this many documents per task (a number < 1: that fraction)")
    u.add_argument("--batch-size", type=int, default=8, help="questions answered together (default 8)")
    u.add_argument("--max-new-tokens", type=int, default=None,
                   help="cap on the answer length (default: each task's own setting)")
    u.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    u.add_argument("--dtype", default=None, help="float32, bfloat16 or auto (default: float32 on CPU, auto on GPU)")
    u.add_argument("--include-path", action="append", default=[],
                   help="extra lmms-eval task folder (repeatable); vqrae's own tasks are always included")
    u.add_argument("--out", default="runs/eval/understanding", help="output folder (default runs/eval/understanding)")
    u.set_defaults(func=run_understanding_cli)
    return u


def run_understanding_cli(args: argparse.Namespace) -> int:
    from vqrae.cli import CLIError
    from vqrae.eval.lmms.understanding import UnderstandingError, run_understanding

    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    try:
        result = run_understanding(args.model, args.tasks, args.data_root, out=args.out, limit=limit,
                                   batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                                   max_new_tokens=args.max_new_tokens, include_path=args.include_path)
    except ImportError as exc:
        raise CLIError(f"the understanding suite needs lmms-eval: pip install 'vqrae[eval]' ({exc})") from exc
    except UnderstandingError as exc:
        raise CLIError(str(exc)) from exc
    for task, metric, value, n in result.rows:
        print(f"{task:>20} {metric:>24}: {value:.4f}  ({n} documents)")
    spq = result.results["vqrae"]["seconds_per_request"]
    if spq is not None:
        print(f"{result.questions} model requests, {spq:.3f} s each, {result.seconds:.1f} s in all")
    print(f"wrote {result.files['results']} and {result.files['table']}")
    return 0
