"""`vqrae train STAGE --config FILE [key=value ...]`: run one training stage with the training engine."""

from __future__ import annotations

import argparse
import logging
import os
import sys

_DESCRIPTION = """\
Train one stage (e.g. encoder-pretrain, tokenizer-stage1, tokenizer-stage2) from a YAML config, with key=value
overrides of any config key (dotted keys reach nested sections), e.g.
  vqrae train tokenizer-stage1 --config configs/shapes-tiny/tokenizer-stage1.yaml lr=3e-4 max_steps=500

Resuming is automatic: if output_dir already holds checkpoints, training continues from the latest complete one
(weights, optimizer, lr schedule, data position and random state), so rerunning the same command after an
interruption finishes the run as if it had never stopped. --resume never refuses to start over an existing run;
--resume PATH starts from that checkpoint folder.

One process runs plain PyTorch (deepspeed: null) or DeepSpeed (deepspeed=zero2, ...). Several processes need
DeepSpeed and a launcher:
  torchrun --nproc_per_node 2 $(which vqrae) train STAGE --config FILE deepspeed=zero2
  deepspeed --no_local_rank --num_gpus 2 $(which vqrae) train STAGE --config FILE deepspeed=zero3
On CPU set OMP_NUM_THREADS=1 (or cores / processes) per process.

Writes to output_dir: config.yaml, metrics.jsonl, loss.png, checkpoints/ (keep_last of them, `latest` names the
newest complete one) and final/ (the trained weights as a plain save_pretrained folder).
Exit codes: 0 done, 1 the loss or gradients became NaN/inf (nothing saved for that step), 2 bad config or input."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a stage with the training engine (resumes automatically)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stage", metavar="STAGE", help="stage name (an unknown name lists the known ones)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. lr=1e-4 batch_size=16")
    # nargs="+": overrides may also follow the file (argparse cannot resume a positional after an option).
    p.add_argument("--config", required=True, nargs="+", metavar=("FILE", "KEY=VALUE"),
                   help="the stage's YAML config, optionally followed by key=value overrides")
    p.add_argument("--resume", metavar="auto|never|PATH", default=None,
                   help="auto (default): continue from the latest checkpoint in output_dir if there is one; never: "
                   "refuse to start if output_dir holds checkpoints; PATH: start from that checkpoint folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqrae.train import TrainingDiverged, distributed, load_config, train
    from vqrae.train.stages import get_stage

    stage_cls = get_stage(args.stage)
    overrides = [*args.overrides, *args.config[1:]]
    if args.resume is not None:
        overrides.append(f"resume={args.resume}")
    cfg = load_config(stage_cls.config_class, args.config[0], overrides)
    root = logging.getLogger()
    level = root.level
    if int(os.environ.get("RANK", "0") or 0) != 0:
        root.setLevel(logging.WARNING)  # one process reports progress (restored below: main() may be called again)
    try:
        result = train(stage_cls(cfg))
    except TrainingDiverged as exc:
        print(f"vqrae train: {exc}", file=sys.stderr)
        return 1
    finally:
        root.setLevel(level)
        distributed.destroy()
    if result.final_dir is not None:
        print(f"trained {args.stage} to step {result.step}; final weights: {result.final_dir}")
    return 0
