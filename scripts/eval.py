"""`vqrae eval SUITE`: evaluation suites (reconstruction now; understanding and GenEval-style suites plug in here)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluation suites (reconstruction, ...)",
                       description="Evaluation suites; each writes a JSON summary and prints its numbers.")
    suites = p.add_subparsers(dest="suite", metavar="SUITE", required=True)
    r = suites.add_parser(
        "reconstruction", help="PSNR, SSIM, LPIPS, rFID, codebook usage and feature fidelity of a tokenizer",
        description="Reconstruct every image of a data set through the tokenizer (image -> codes -> image) and "
        "report PSNR and SSIM (uint8, per image then mean), LPIPS and rFID when their weights are given as local "
        "files, codebook utilization and perplexity over the whole set, and the cosine between the tokenizer's "
        "features and a reference encoder's. Writes summary.json and grid.png (originals above reconstructions).")
    r.add_argument("--tokenizer", required=True, help="VQRAE folder")
    r.add_argument("--data", required=True,
                   help='image data: a folder tree, records, a datasets dataset, tar shards, or "shapes" '
                   "(ShapesWorld validation images rendered on the fly)")
    r.add_argument("--num", type=int, default=None, help="evaluate at most this many images (default: all; "
                   "512 for --data shapes)")
    r.add_argument("--seed", type=int, default=0, help="ShapesWorld seed for --data shapes (default 0)")
    r.add_argument("--reference-encoder", help="a VQRAE folder or SigLIP/DINOv2 folder whose encoder features the "
                   "tokenizer's are compared with (e.g. the stage-1 tokenizer after stage 2)")
    r.add_argument("--lpips-weights", help="torchvision vgg16 state dict on disk (enables LPIPS)")
    r.add_argument("--inception-weights", help="torch-fidelity pt_inception-2015-12-05 weights on disk (enables rFID)")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--device", default="cpu")
    r.add_argument("--out", default="runs/eval/reconstruction", help="output folder (default runs/eval/reconstruction)")
    r.set_defaults(func=run_reconstruction)


def run_reconstruction(args: argparse.Namespace) -> int:
    from torch.utils.data import Subset

    from vqrae.cli import CLIError
    from vqrae.eval.reconstruction import load_reference_encoder, reconstruction_metrics, write_summary
    from vqrae.tokenizer import load_vqrae
    from vqrae.train.stages.common import image_text_dataset

    if args.batch_size <= 0:
        raise CLIError(f"--batch-size must be positive, got {args.batch_size}")
    if args.num is not None and args.num <= 0:
        raise CLIError(f"--num must be positive, got {args.num}")
    vq = load_vqrae(args.tokenizer, args.device)
    num = args.num or 512
    dataset = image_text_dataset(args.data, num, vq.image_size, "val", args.seed, kind="image")
    if args.num is not None and args.num < len(dataset):
        dataset = Subset(dataset, range(args.num))
    reference = load_reference_encoder(args.reference_encoder, args.device) if args.reference_encoder else None
    out = Path(args.out)
    metrics = reconstruction_metrics(vq, dataset, args.batch_size, reference_encoder=reference,
                                     lpips_vgg_weights=args.lpips_weights, inception_weights=args.inception_weights,
                                     to_device=lambda t: t.to(args.device), grid_path=out / "grid.png")
    metrics["tokenizer"] = args.tokenizer
    metrics["data"] = args.data
    write_summary(metrics, out / "summary.json")
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"{key:>16}: {value:.4f}")
        elif key != "notes":
            print(f"{key:>16}: {value}")
    for key, note in metrics.get("notes", {}).items():
        print(f"{key:>16}: {note}")
    print(f"wrote {out / 'summary.json'} and {out / 'grid.png'}")
    return 0
