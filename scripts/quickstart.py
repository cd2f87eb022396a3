"""`vqrae quickstart`: the whole ShapesWorld pipeline on a CPU, from nothing to a trained tokenizer.

Steps (each skipped when its result is already on disk, so a stopped quickstart continues where it stopped):
  1. render ShapesWorld (train/val/test) with `vqrae data shapes`
  2. stage 0: pretrain a small SigLIP encoder on its captions       (`vqrae train encoder-pretrain`)
  3. tokenizer stage 1: frozen encoder, train codebook map + decoder (`vqrae train tokenizer-stage1`)
  4. tokenizer stage 2: unfreeze the encoder with self-distillation  (`vqrae train tokenizer-stage2`)
  5. evaluate reconstruction on held-out images                      (`vqrae eval reconstruction`)
  6. round-trip one held-out image                                   (`vqrae reconstruct`)
The configs are configs/shapes-tiny/*.yaml; every step is an ordinary command you can rerun by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from vqrae.train.config import CONFIG_DIR

logger = logging.getLogger(__name__)

CONFIGS = CONFIG_DIR / "shapes-tiny"

# --smoke: the same pipeline with toy sizes, to check that everything is wired (about a minute on 2 cores).
SMOKE = {
    "data": {"num": 400},
    "encoder-pretrain": ["max_steps=10", "width=32", "depth=1", "heads=2", "text_depth=1", "batch_size=16",
                         "tokenizer_corpus=200", "vocab_size=150", "val_num=32", "eval_every=0", "save_every=0"],
    "tokenizer-stage1": ["max_steps=6", "codebook_size=64", "codebook_dim=32", "batch_size=8", "val_num=16",
                         "eval_every=0", "save_every=0"],
    "tokenizer-stage2": ["max_steps=4", "batch_size=8", "val_num=16", "eval_every=0", "save_every=0"],
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train and evaluate a VQRAE tokenizer on ShapesWorld, end to end (CPU)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quickstart", help="working folder (default runs/quickstart)")
    p.add_argument("--smoke", action="store_true", help="toy sizes: checks the wiring in about a minute")
    p.set_defaults(func=run)


def _train(stage_name: str, out: Path, overrides: list[str], smoke: bool) -> Path:
    from vqrae.train import load_config, train
    from vqrae.train.stages import get_stage

    final = out / "final"
    if (final / "config.json").is_file():
        print(f"[skip] {stage_name}: {final} exists")
        return final
    cls = get_stage(stage_name)
    extra = SMOKE[stage_name] if smoke else []
    cfg = load_config(cls.config_class, CONFIGS / f"{stage_name}.yaml", [f"output_dir={out}", *overrides, *extra])
    print(f"[run] vqrae train {stage_name} --config {CONFIGS / (stage_name + '.yaml')} output_dir={out} "
          + " ".join(overrides + extra))
    t0 = time.time()
    result = train(cls(cfg))
    print(f"[done] {stage_name} in {time.time() - t0:.0f} s -> {result.final_dir}")
    return result.final_dir


def run(args: argparse.Namespace) -> int:
    from vqrae.cli.cli import main as vqrae

    out = Path(args.out)
    data = out / "shapes64"
    if not (data / "val" / "metadata.jsonl").is_file():
        num = SMOKE["data"]["num"] if args.smoke else 22000
        cmd = ["data", "shapes", "--out", str(data), "--num", str(num), "--size", "64", "--format", "folder"]
        print("[run] vqrae " + " ".join(cmd))
        if vqrae(cmd) != 0:
            return 2
    else:
        print(f"[skip] data: {data} exists")
    paths = [f"data={data / 'train'}", f"val_data={data / 'val'}"]
    encoder = _train("encoder-pretrain", out / "encoder", paths, args.smoke)
    stage1 = _train("tokenizer-stage1", out / "tokenizer-stage1", [*paths, f"encoder={encoder}"], args.smoke)
    stage2 = _train("tokenizer-stage2", out / "tokenizer-stage2", [*paths, f"tokenizer={stage1}"], args.smoke)

    from vqrae.eval.reconstruction import load_reference_encoder, reconstruction_metrics, write_summary
    from vqrae.tokenizer import load_vqrae
    from vqrae.train.stages.common import image_text_dataset

    results = {}
    for name, folder, reference in (("stage1", stage1, None), ("stage2", stage2, stage1)):
        vq = load_vqrae(str(folder))
        val = image_text_dataset(str(data / "test"), 0, vq.image_size, "test", 0, kind="image")
        ref = load_reference_encoder(str(reference)) if reference else None
        results[name] = reconstruction_metrics(vq, val, 64, reference_encoder=ref,
                                               grid_path=out / f"eval-{name}" / "grid.png")
        write_summary(results[name], out / f"eval-{name}" / "summary.json")
    print("\nreconstruction on held-out ShapesWorld test images:")
    print(f"{'':8}{'PSNR':>8}{'SSIM':>8}{'util':>8}{'perplexity':>12}{'feat cos':>10}{'colour probe':>16}")
    for name, m in results.items():
        probe = (f"{m['colour_probe_features']:.1f} / {m['colour_probe_codes']:.1f}"
                 if "colour_probe_codes" in m else "-")
        print(f"{name:8}{m['psnr']:>8.2f}{m['ssim']:>8.3f}{m['utilization']:>8.1%}{m['perplexity']:>12.1f}"
              f"{m.get('feature_cosine', 1.0):>10.4f}{probe:>16}")
    print("(colour probe: RMS error, in 8-bit levels, of a linear read-out of each patch's mean colour from the "
          "features / from the codes)")
    if all("shape_accuracy" in m for m in results.values()):  # what generation needs: objects survive the trip
        print(f"\n{'':8}{'shape acc':>11}{'colour acc':>12}{'box acc':>9}{'GenEval rec / orig':>20}")
        for name, m in results.items():
            print(f"{name:8}{m['shape_accuracy']:>11.1%}{m['colour_accuracy']:>12.1%}{m['box_accuracy']:>9.1%}"
                  f"{m.get('geneval', float('nan')):>12.3f} / {m.get('geneval_originals', float('nan')):.3f}")
        print("(the ShapesWorld detector on reconstructions, objects matched to the ground truth; GenEval-style "
              "score of the reconstructions against the originals')")
    sample = min((data / "test" / "images").glob("*.png"))
    pair = out / "reconstruction.png"
    vqrae(["reconstruct", "--tokenizer", str(stage2), "--image", str(sample), "--out", str(pair)])
    (out / "quickstart.json").write_text(json.dumps({k: {m: v for m, v in r.items() if m != "notes"}
                                                     for k, r in results.items()}, indent=2))
    print(f"\ntokenizer: {stage2}\nevaluation: {out}/eval-stage*/ (summary.json, grid.png)\n"
          f"try: vqrae reconstruct --tokenizer {stage2} --image YOUR.png --out rec.png")
    return 0
