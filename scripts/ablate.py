"""`vqrae ablate ABLATION`: tokenizer stage 1 trained twice or more on one config, results side by side.

codebook-dim: the VQRAE paper (its codebook ablation) finds that a codebook dim below the encoder width under-uses
  the codebook (16384 codes: 64% used at dim 384, 100% at 1536 for a 1152-wide encoder; <= 256 did not converge).
  This reruns that comparison on any stage-1 config: same data, steps and seed, only `codebook_dim` changes.
quantizer: the same stage 1 with codes and without (the continuous RAE baseline: the decoder reads the encoder's
  features directly). The PSNR gap is what quantization costs; the continuous PSNR is the ceiling of this encoder,
  decoder and training budget.

Every arm is a fresh run of the training engine in this process, seeded before its model is built: arms whose
settings agree start from the same weights (codebook included), so the differences are the ablation's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqrae.cli import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="ablations of tokenizer stage 1 (codebook-dim, quantizer)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="ablation", metavar="ABLATION", required=True)
    c = kinds.add_parser("codebook-dim", help="train stage 1 once per codebook dim; print utilization and PSNR",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--config", required=True, help="a tokenizer-stage1 YAML config")
    c.add_argument("--dims", default="16,256", help="comma-separated codebook dims (default 16,256)")
    c.add_argument("--out", default="runs/ablate-codebook-dim", help="one run folder per dim is made inside")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    c.set_defaults(func=run_codebook_dim)
    q = kinds.add_parser("quantizer", help="train stage 1 with and without quantization; print PSNR of both",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--config", required=True, help="a tokenizer-stage1 YAML config")
    q.add_argument("--out", default="runs/ablate-quantizer", help="runs codes/ and continuous/ are made inside")
    q.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for both runs")
    q.set_defaults(func=run_quantizer)


def _stage1_eval(config: str, overrides: list[str], out: Path) -> dict:
    """Train tokenizer stage 1 on `config` + `overrides` into `out`; its last evaluation's numbers."""
    from vqrae.train import load_config, train
    from vqrae.train.metrics import read_metrics
    from vqrae.train.stages import get_stage

    cls = get_stage("tokenizer-stage1")
    cfg = load_config(cls.config_class, config, [*overrides, f"output_dir={out}"])
    print(f"[run] {' '.join(overrides)} -> {out}")
    train(cls(cfg))
    last = [r for r in read_metrics(out / "metrics.jsonl") if "eval/psnr" in r][-1]
    return {k.removeprefix("eval/"): v for k, v in last.items() if k.startswith("eval/")}


def run_quantizer(args: argparse.Namespace) -> int:
    rows = []
    for label, flag in (("codes", "true"), ("continuous", "false")):
        m = _stage1_eval(args.config, [*args.overrides, f"quantize={flag}"], Path(args.out) / label)
        rows.append({"decoder input": label, "psnr": m["psnr"], "ssim": m["ssim"],
                     "utilization": m.get("utilization")})
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{'decoder input':>14}{'PSNR':>8}{'SSIM':>8}{'utilization':>13}")
    for r in rows:
        util = f"{r['utilization']:.1%}" if r["utilization"] is not None else "-"
        print(f"{r['decoder input']:>14}{r['psnr']:>8.2f}{r['ssim']:>8.3f}{util:>13}")
    print(f"quantization costs {rows[1]['psnr'] - rows[0]['psnr']:.2f} dB PSNR here")
    print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0


def run_codebook_dim(args: argparse.Namespace) -> int:
    try:
        dims = [int(d) for d in args.dims.split(",") if d.strip()]
    except ValueError:
        raise CLIError(f"--dims must be comma-separated integers, got {args.dims!r}") from None
    if len(dims) < 2 or min(dims) <= 0:
        raise CLIError(f"--dims needs at least two positive dims, got {args.dims!r}")
    rows = []
    for dim in dims:
        m = _stage1_eval(args.config, [*args.overrides, f"model.codebook_dim={dim}"], Path(args.out) / f"dim-{dim}")
        rows.append({"codebook_dim": dim, "utilization": m["utilization"], "perplexity": m["perplexity"],
                     "psnr": m["psnr"]})
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{'codebook dim':>13}{'utilization':>13}{'perplexity':>12}{'PSNR':>8}")
    for r in rows:
        print(f"{r['codebook_dim']:>13}{r['utilization']:>13.1%}{r['perplexity']:>12.1f}{r['psnr']:>8.2f}")
    print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0
