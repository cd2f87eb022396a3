"""`vqrae` entry point: a dispatcher over one module per subcommand.

Each module in COMMANDS exposes `register(subparsers)`, which adds its parser and sets `func` (args -> exit code).

Errors, by what they mean:
- bad input: the library reports it as ValueError (a bad value, `InvalidRecord`, `UnreadableImage`, a subcommand's
  `CLIError`) or OSError (a missing or unreadable file). One line on stderr, exit 2.
- anything else (KeyError, TypeError, AttributeError, RuntimeError from torch, ...) is a bug, not the user's input:
  the full traceback on stderr, exit 1.
`VQRAE_DEBUG=1` re-raises every error instead (a traceback for bad input too).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback

from vqrae.cli import CLIError

# Order is the order of `vqrae --help`.
COMMANDS = [
    "quickstart",
    "reconstruct",
    "train",
    "eval",
    "ablate",
    "scale",
    "chat",
    "generate",
    "export",
    "bench",
    "data",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqrae",
        description="VQRAE: a visual tokenizer with continuous features for understanding and discrete codes for "
        "generation, and a unified multimodal model built on it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    # The `deepspeed` launcher passes --local_rank=N before the subcommand; accept it and hand it on as torchrun does.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vqrae.cli.{name}").register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parse_args`, except that KEY=VALUE overrides may come on both sides of options (`vqrae ablate quantizer a=1
    --config C b=2`): argparse fills a trailing `nargs="*"` positional from one run of tokens only and calls the
    rest unrecognized, so leftovers that look like overrides join the command's `overrides` list."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        overrides = getattr(args, "overrides", None)
        stray = [x for x in extra if x.startswith("-") or "=" not in x]
        if overrides is None or stray:
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.overrides = [*overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if not args.verbose:
        # Hugging Face's per-load "Loading weights" bars drown our own output; --verbose brings them back.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, OSError) as exc:  # bad input (see the module docstring)
        if os.environ.get("VQRAE_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"vqrae {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vqrae {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: never shortened to one line
        if os.environ.get("VQRAE_DEBUG"):
            raise
        traceback.print_exc()
        print(f"vqrae {args.command}: internal error (a bug, not your input; the traceback is above)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
