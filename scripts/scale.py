"""`vqrae scale --config FILE [KEY=VALUE ...]`: a sweep of generator sizes, each an ordinary `unified-gen` run,
fitted as loss = a * N^-b + c. The sweep itself is `vqrae.train.sweep` (its docstring has the layout, resuming and
budgets); this file parses the command line.
"""

from __future__ import annotations

import argparse
import shlex

from vqrae.cli import CLIError
from vqrae.train.sweep import ScalingConfig, Sweep


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", help="scaling sweep: unified-gen over LLM sizes, fitted loss = a N^-b + c",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, nargs="+", metavar=("FILE", "KEY=VALUE"),
                   help="the sweep's YAML (e.g. shapes-tiny/scaling), optionally followed by key=value overrides")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the sweep's keys")
    p.add_argument("--only", action="append", metavar="SIZE", help="run only this size (repeatable)")
    p.add_argument("--collect", action="store_true", help="fit, tabulate and plot the finished sizes; train nothing")
    p.add_argument("--plan", action="store_true", help="print params, steps, tokens, FLOPs and memory; train nothing")
    p.add_argument("--out", default=None, help="output folder (overrides the config's output_dir)")
    p.set_defaults(func=run)


def load_scaling_config(path: str, overrides: list[str]) -> ScalingConfig:
    from vqrae.train import load_config

    return load_config(ScalingConfig, path, overrides)


def run(args: argparse.Namespace) -> int:
    overrides = [*args.config[1:], *args.overrides, *([f"output_dir={args.out}"] if args.out else [])]
    cfg = load_scaling_config(args.config[0], overrides)
    if sum([bool(args.only), args.collect, args.plan]) > 1:
        raise CLIError("--only, --collect and --plan are separate steps: give one")
    sweep = Sweep(cfg)
    if args.plan:
        sweep.print_plan()
        return 0
    if args.collect:
        sweep.collect()
        return 0
    names = [s.name for s in cfg.size_specs]
    for name in args.only or []:
        if name not in names:
            raise CLIError(f"--only {name}: no such size (sizes: {', '.join(names)})")
    if not cfg.text_tokenizer or not cfg.vqrae:
        raise CLIError("config keys 'text_tokenizer' and 'vqrae' are required to train (folders or hub ids)")
    if cfg.geneval.enabled:
        sweep.prompts()
    for size in cfg.size_specs:
        if not args.only or size.name in args.only:
            sweep.run_size(size)
    if not args.only:
        sweep.collect()
    else:
        again = shlex.join(["vqrae", "scale", "--config", *args.config, *args.overrides,
                            *(["--out", args.out] if args.out else []), "--collect"])
        print(f"[scale] done: {', '.join(args.only)}; `{again}` fits the finished sizes")
    return 0

