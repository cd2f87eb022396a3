"""`vqrae ablate ABLATION`: a training run repeated with one setting changed, results side by side.

codebook-dim: the VQRAE paper (its codebook ablation) finds that a codebook dim below the encoder width under-uses
  the codebook (16384 codes: 64% used at dim 384, 100% at 1536 for a 1152-wide encoder; <= 256 did not converge).
  This reruns that comparison on any stage-1 config: same data, steps and seed, only `codebook_dim` changes.
quantizer: the same stage 1 with codes and without (the continuous RAE baseline: the decoder reads the encoder's
  features directly). The PSNR gap is what quantization costs; the continuous PSNR is the ceiling of this encoder,
  decoder and training budget.
understanding-input: the unified model reading images as continuous features (the paper's design: VQRAE features
  through the projector) against reading them as the embeddings of their discrete codes (what it draws with): the
  same LLM, tokenizer, data and steps through unified-align and unified-sft; ShapesWorld VQA accuracy per question
  type on held-out images. The paper finds that continuous features understand better.
distillation: tokenizer stage 2 with self-distillation (the encoder's features pulled towards its stage-1 copy)
  against without (distill_weight=0), each followed by the same unified-align + unified-sft; VQA per type. The
  paper: without distillation the encoder drifts to what the pixel decoder needs and understanding collapses.
Overrides for the unified stages are `align:KEY=VALUE` / `sft:KEY=VALUE` (or KEY=VALUE for both); for the tokenizer
stage of `distillation`, `tok:KEY=VALUE`.

Every arm is a fresh run of the training engine in this process, seeded before its model is built: arms whose
settings agree start from the same weights (codebook included), so the differences are the ablation's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqrae.cli import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ablate", help="ablations: codebook-dim, quantizer, understanding-input, distillation",
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
    u = kinds.add_parser("understanding-input", help="VQA from continuous features against from code embeddings",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = kinds.add_parser("distillation", help="VQA with a stage-2 tokenizer trained with and without "
                         "self-distillation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for a in (u, d):
        a.add_argument("--llm", required=True, help="the LLM folder (lm-pretrain's final/, or any HF causal LM)")
        a.add_argument("--align-config", default="shapes-tiny/unified-align", help="unified-align config")
        a.add_argument("--sft-config", default="shapes-tiny/unified-sft", help="unified-sft config")
        a.add_argument("--vqa-images", type=int, default=200, help="held-out ShapesWorld test images asked")
        a.add_argument("overrides", nargs="*", metavar="[align:|sft:|tok:]KEY=VALUE", help="config overrides")
    u.add_argument("--vqrae", required=True, help="the tokenizer folder (tokenizer-stage2's final/)")
    u.add_argument("--out", default="runs/ablate-understanding-input", help="arms features/ and codes/ inside")
    u.set_defaults(func=run_understanding_input)
    d.add_argument("--tokenizer-config", default="shapes-tiny/tokenizer-stage2", help="tokenizer-stage2 config "
                   "(its `tokenizer:` key names the stage-1 tokenizer both arms start from)")
    d.add_argument("--out", default="runs/ablate-distillation", help="arms with/ and without/ inside")
    d.set_defaults(func=run_distillation)


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


VQA_COLUMNS = (("overall", "overall_acc"), ("count", "count_acc"), ("colour", "color_acc"), ("shape", "shape_acc"),
               ("exist F1", "exist_f1"), ("position", "position_acc"), ("mc", "mc_acc"))


def _split_overrides(overrides: list[str], prefixes: tuple[str, ...]) -> dict[str, list[str]]:
    """`align:lr=1e-3` -> {"align": ["lr=1e-3"]}; an override without a prefix goes to every unified stage."""
    out: dict[str, list[str]] = {p: [] for p in prefixes}
    for item in overrides:
        head, sep, rest = item.partition(":")
        if sep and head in prefixes:
            out[head].append(rest)
        elif sep and "=" not in head:
            raise CLIError(f"override {item!r}: prefix must be one of {', '.join(p + ':' for p in prefixes)}")
        else:
            for p in prefixes:
                if p != "tok":
                    out[p].append(item)
    return out


def _train_stage(name: str, config: str, overrides: list[str], out: Path) -> Path:
    from vqrae.train import load_config, train
    from vqrae.train.stages import get_stage

    cls = get_stage(name)
    cfg = load_config(cls.config_class, config, [*overrides, f"output_dir={out}"])
    print(f"[run] {name} {' '.join(overrides)} -> {out}")
    return train(cls(cfg)).final_dir


def _understanding_arm(args, vqrae: str, out: Path, extra: dict[str, list[str]]) -> dict:
    """unified-align + unified-sft from the LLM and `vqrae`, then VQA on held-out images."""
    from vqrae.eval.shapes_quick import shapes_vqa_metrics
    from vqrae.unified_model import UnifiedModel

    align = _train_stage("unified-align", args.align_config,
                         [f"llm={args.llm}", f"vqrae={vqrae}", *extra["align"]], out / "align")
    sft = _train_stage("unified-sft", args.sft_config, [f"init={align}", *extra["sft"]], out / "sft")
    return shapes_vqa_metrics(UnifiedModel.from_pretrained(sft), args.vqa_images, split="test", progress=True)


def _vqa_table(label: str, rows: list[dict], out: Path) -> None:
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    lines = [f"| {label} | " + " | ".join(c for c, _ in VQA_COLUMNS) + " |",
             "|---|" + "---|" * len(VQA_COLUMNS)]
    lines += [f"| {r[label]} | " + " | ".join(f"{r[k]:.3f}" for _, k in VQA_COLUMNS) + " |" for r in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'}")


def run_understanding_input(args: argparse.Namespace) -> int:
    extra = _split_overrides(args.overrides, ("align", "sft"))
    out, rows = Path(args.out), []
    for arm in ("features", "codes"):
        # codes are read one position per code: that arm never merges feature blocks (config feature_merge)
        merge = ["feature_merge=1"] if arm == "codes" else []
        metrics = _understanding_arm(args, args.vqrae, out / arm,
                                     {"align": [f"image_input={arm}", *merge, *extra["align"]], "sft": extra["sft"]})
        rows.append({"image input": arm, **metrics})
    _vqa_table("image input", rows, out)
    return 0


def run_distillation(args: argparse.Namespace) -> int:
    from vqrae.train.config import load_config as _load
    from vqrae.train.stages import get_stage

    extra = _split_overrides(args.overrides, ("align", "sft", "tok"))
    tok_cls = get_stage("tokenizer-stage2")
    weight = _load(tok_cls.config_class, args.tokenizer_config, extra["tok"]).distill_weight
    if weight == 0:
        raise CLIError(f"{args.tokenizer_config} has distill_weight 0: the 'with' arm needs distillation on")
    out, rows = Path(args.out), []
    for arm, w in (("with", weight), ("without", 0.0)):
        tok = _train_stage("tokenizer-stage2", args.tokenizer_config, [*extra["tok"], f"distill_weight={w}"],
                           out / arm / "tokenizer")
        metrics = _understanding_arm(args, str(tok), out / arm, extra)
        rows.append({"distillation": f"{arm} ({w:g})", **metrics})
    _vqa_table("distillation", rows, out)
    return 0
