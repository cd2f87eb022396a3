"""`vqrae ablate codebook-dim`: tokenizer stage 1 at several codebook dims, codebook usage and PSNR side by side.

The VQRAE paper (its codebook ablation) finds that a codebook dim below the encoder width under-uses the codebook
(16384 codes: 64% used at dim 384, 100% at 1536 for a 1152-wide encoder; <= 256 did not converge). This command
reruns that comparison on any stage-1 config: same data, steps and seed, only `codebook_dim` changes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scripts import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="ablations (codebook-dim: stage 1 at several codebook dims)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="ablation", metavar="ABLATION", required=True)
    c = kinds.add_parser("codebook-dim", help="train stage 1 once per codebook dim; print utilization and PSNR",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--config", required=True, help="a tokenizer-stage1 YAML config")
    c.add_argument("--dims", default="16,256", help="comma-separated codebook dims (default 16,256)")
    c.add_argument("--out", default="runs/ablate-codebook-dim", help="one run folder per dim is made inside")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    c.set_defaults(func=run_codebook_dim)


def run_codebook_dim(args: argparse.Namespace) -> int:
    from train import load_config, train
    from train.metrics import read_metrics
    from train.stages import get_stage

    try:
        dims = [int(d) for d in args.dims.split(",") if d.strip()]
    except ValueError:
        raise CLIError(f"--dims must be comma-separated integers, got {args.dims!r}") from None
    if len(dims) < 2 or min(dims) <= 0:
        raise CLIError(f"--dims needs at least two positive dims, got {args.dims!r}")
    cls = get_stage("tokenizer-stage1")
    rows = []
    for dim in dims:
        out = Path(args.out) / f"dim-{dim}"
        cfg = load_config(cls.config_class, args.config,
                          [*args.overrides, f"codebook_dim={dim}", f"output_dir={out}"])
        print(f"[run] codebook_dim={dim} -> {out}")
        train(cls(cfg))
        last = [r for r in read_metrics(out / "metrics.jsonl") if "eval/psnr" in r][-1]
        rows.append({"codebook_dim": dim, "utilization": last["eval/utilization"],
                     "perplexity": last["eval/perplexity"], "psnr": last["eval/psnr"]})
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{'codebook dim':>13}{'utilization':>13}{'perplexity':>12}{'PSNR':>8}")
    for r in rows:
        print(f"{r['codebook_dim']:>13}{r['utilization']:>13.1%}{r['perplexity']:>12.1f}{r['psnr']:>8.2f}")
    print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0
