"""`vqrae eval SUITE`: evaluation suites: reconstruction, geneval (text-to-image), understanding (lmms-eval)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluation suites (reconstruction, geneval, understanding)",
                       description="Evaluation suites; each writes a JSON summary and prints its numbers.")
    suites = p.add_subparsers(dest="suite", metavar="SUITE", required=True)
    r = suites.add_parser(
        "reconstruction", help="PSNR, SSIM, LPIPS, rFID, codebook usage and feature fidelity of a tokenizer",
        description="Reconstruct every image of a data set through the tokenizer (image -> codes -> image) and "
        "report PSNR and SSIM (uint8, per image then mean), LPIPS and rFID when their weights are given as local "
        "files, codebook utilization and perplexity over the whole set, and the cosine between the tokenizer's "
        "features and a reference encoder's. On ShapesWorld images (--data shapes, or a folder written by `vqrae data "
        "shapes`) also the reconstruction fidelity: per-object shape, colour and box accuracy of the ShapesWorld "
        "detector, the GenEval-style score of originals and reconstructions per tag, and the patch shape probe. "
        "Writes summary.json and grid.png (originals above reconstructions).")
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
    c = suites.add_parser(
        "patch-ceiling", help="what a codebook over raw pixel patches keeps: the yardstick for a token grid and K",
        description="K-means on the raw PxP pixel patches of training images; every test patch replaced by its "
        "nearest centroid, and measured as `eval reconstruction` measures a tokenizer (PSNR, SSIM, and on "
        "ShapesWorld the detector's shape/colour/box accuracy and the GenEval-style score against the originals). "
        "A tokenizer with that patch and codebook size whose codes were pixel-optimal would score about this, "
        "whatever its decoder: if this misses a goal, change the patch or K, not the training. Writes "
        "summary.json and one grid per row.")
    c.add_argument("--data", required=True, help='test images (as for `eval reconstruction`; "shapes": rendered)')
    c.add_argument("--train-data", required=True, help="images whose patches the K-means learns from")
    c.add_argument("--patch", default="4,8", help="patch sizes, comma-separated (default 4,8)")
    c.add_argument("--codebook-size", default="512", help="codebook sizes K, comma-separated (default 512)")
    c.add_argument("--size", type=int, default=64, help="image side the data is read at (default 64)")
    c.add_argument("--num", type=int, default=300, help="test images (default 300)")
    c.add_argument("--train-num", type=int, default=3000, help="training images (default 3000)")
    c.add_argument("--iters", type=int, default=15, help="Lloyd iterations (default 15)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--tokenizer", help="also a tokenizer folder at its own patch and K: its codes through its decoder, "
                   "through a code table (each code as the mean patch it stands for) and its features through a "
                   "per-token MLP, to see whether its encoder, its codes or its decoder lose what the patches keep")
    c.add_argument("--probe-steps", type=int, default=2000, help="training steps of the feature MLP (default 2000)")
    c.add_argument("--out", default="runs/eval/patch-ceiling", help="output folder (default runs/eval/patch-ceiling)")
    c.set_defaults(func=run_patch_ceiling)
    register_geneval(suites)
    from vqrae.cli.eval_understanding import register_understanding

    register_understanding(suites)


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
            print(f"{key:>24}: {value:.4f}")
        elif key not in ("notes", "geneval_tags"):
            print(f"{key:>24}: {value}")
    if metrics.get("geneval_tags"):
        print("GenEval-style score of each image against its own record (ShapesWorld detector):")
        print(f"{'tag':>24}  {'originals':>10}  {'reconstructions':>15}")
        for tag, v in metrics["geneval_tags"].items():
            print(f"{tag:>24}  {v['originals']:>10.4f}  {v['reconstructions']:>15.4f}")
    for key, note in metrics.get("notes", {}).items():
        print(f"{key:>16}: {note}")
    print(f"wrote {out / 'summary.json'} and {out / 'grid.png'}")
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    from vqrae.cli import CLIError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise CLIError(f"{flag} takes positive whole numbers, got {text!r}")
    return values


def run_patch_ceiling(args: argparse.Namespace) -> int:
    import json

    from torch.utils.data import Subset

    from vqrae.cli import CLIError
    from vqrae.eval.patch_ceiling import patch_ceiling, read_images, tokenizer_rows
    from vqrae.train.stages.common import image_text_dataset

    patches, sizes = _int_list(args.patch, "--patch"), _int_list(args.codebook_size, "--codebook-size")
    if args.num <= 0 or args.train_num <= 0:
        raise CLIError("--num and --train-num must be positive")
    bad = [p for p in patches if args.size % p]
    if bad:
        raise CLIError(f"--patch {bad} does not divide the image size {args.size}")

    def data(path: str, num: int, split: str):
        ds = image_text_dataset(path, num, args.size, split, args.seed, kind="image")
        return Subset(ds, range(min(num, len(ds))))

    out = Path(args.out)
    if args.probe_steps < 0:
        raise CLIError("--probe-steps must be >= 0")
    vq = None
    if args.tokenizer:
        from vqrae.tokenizer import load_vqrae

        vq = load_vqrae(args.tokenizer)
    train_pixels, test_batches = read_images(data(args.train_data, args.train_num, "train"),
                                             data(args.data, args.num, "test"))
    rows = patch_ceiling(train_pixels, test_batches, patches, sizes, iters=args.iters, seed=args.seed, grid_dir=out)
    if vq is not None:
        rows += tokenizer_rows(vq, train_pixels, test_batches, args.probe_steps, args.seed, grid_dir=out,
                               name=Path(args.tokenizer).name if Path(args.tokenizer).name != "final" else
                               Path(args.tokenizer).parent.name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{'source':<34} {'patch':>5} {'K':>6} {'tokens':>6} {'PSNR':>6} {'SSIM':>6} {'perplexity':>10} {'shape':>6} {'colour':>6} "
          f"{'box':>6} {'GenEval rec/orig':>16}")
    for r in rows:
        fid = (f"{r['shape_accuracy']:>6.1%} {r['colour_accuracy']:>6.1%} {r['box_accuracy']:>6.1%} "
               f"{r['geneval']:>7.3f}/{r['geneval_originals']:.3f}") if "shape_accuracy" in r else "  (no ShapesWorld records)"
        ppl = f"{r['perplexity']:>10.1f}" if r["perplexity"] is not None else f"{'-':>10}"
        print(f"{r['source'][:34]:<34} {r['patch']:>5} {r['codebook_size']:>6} {r['tokens']:>6} {r['psnr']:>6.2f} "
              f"{r['ssim']:>6.3f} {ppl} {fid}")
    print(f"wrote {out / 'summary.json'} and a grid per row in {out}")
    return 0


def register_geneval(suites: argparse._SubParsersAction) -> None:
    g = suites.add_parser(
        "geneval", help="GenEval-style text-to-image scoring (official rules, pluggable detector)",
        description="Generate images for a GenEval prompt file into the official layout (OUT/00000/metadata.jsonl + "
        "samples/0000.png ...; resumable) and score them with the official GenEval rules; or score a folder any "
        "model wrote in that layout (--images); or measure the tokenizer ceiling on ShapesWorld renders "
        "(--reconstruct). Writes results.jsonl (per image, with the reason it failed), summary.json, summary.md "
        "and failures.png. ShapesWorld prompts are scored by a built-in detector; COCO prompts need local "
        "Mask2Former and CLIP weights.")
    mode = g.add_mutually_exclusive_group(required=True)
    mode.add_argument("--model", help="unified model folder: generate, then score")
    mode.add_argument("--images", help="score only: a folder in the GenEval layout written by any model")
    mode.add_argument("--reconstruct", metavar="TOKENIZER",
                      help="VQRAE folder: score its reconstructions of ShapesWorld renders of the prompts against "
                      "the renders (the tokenizer's ceiling)")
    g.add_argument("--prompts", default=None, help="GenEval metadata JSONL: the official evaluation_metadata.jsonl "
                   "(553 prompts, from the GenEval repository) or `vqrae data prompts` output (ShapesWorld); "
                   "required with --model and --reconstruct")
    g.add_argument("--out", default=None, help="output folder (default runs/eval/geneval; with --images: the "
                   "results go next to the images)")
    g.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    g.add_argument("--num-images", type=int, default=4, help="images per prompt (default 4)")
    g.add_argument("--batch-size", type=int, default=8, help="images per forward batch (default 8)")
    g.add_argument("--seed", type=int, default=0, help="image i of prompt p gets seed + p * num_images + i")
    g.add_argument("--cfg-scale", type=float, default=None, help="default: the model's sampling_config")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--detector", choices=("auto", "shapes", "coco"), default="auto",
                   help="auto: ShapesWorld detector when every prompt class is a shape, else COCO")
    g.add_argument("--detector-weights", default=None, help="local Mask2Former/DETR checkpoint folder (COCO)")
    g.add_argument("--clip-weights", default=None, help="local CLIP checkpoint folder (COCO colours)")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.set_defaults(func=run_geneval)


def _geneval_prompts(args: argparse.Namespace, default: str | None) -> list[dict]:
    from vqrae.cli import CLIError
    from vqrae.data.geneval import read_geneval_metadata

    path = args.prompts or default
    if path is None:
        raise CLIError("--prompts is required here (a GenEval metadata JSONL)")
    records = read_geneval_metadata(path)
    if args.limit is not None:
        if args.limit <= 0:
            raise CLIError(f"--limit must be positive, got {args.limit}")
        records = records[: args.limit]
    return records


def _print_summary(summary: dict, out: Path) -> None:
    for tag, v in summary["tags"].items():
        print(f"{tag:>16}: {v['score']:.4f} ({v['correct']} / {v['images']})")
    print(f"{'overall':>16}: {summary['overall']:.4f}")
    print(f"wrote {out / 'results.jsonl'}, {out / 'summary.json'}, {out / 'summary.md'}"
          + (f" and {summary['failures_png']}" if summary.get("failures_png") else ""))


def run_geneval(args: argparse.Namespace) -> int:
    import time

    from vqrae.cli import CLIError
    from vqrae.eval.geneval.layout import generate_folder, read_image_folder
    from vqrae.eval.geneval.suite import make_plugins, score_folder, tokenizer_ceiling

    for name in ("num_images", "batch_size"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.images:
        prompts, _ = read_image_folder(args.images)
        detector, colors, kind = make_plugins(args.detector, [r for _, r, _ in prompts], args.detector_weights,
                                              args.clip_weights, args.device)
        out = Path(args.out or args.images)
        _print_summary(score_folder(args.images, detector, colors, out=out), out)
        return 0
    out = Path(args.out or "runs/eval/geneval")
    if args.reconstruct:
        from vqrae.tokenizer import load_vqrae

        records = _geneval_prompts(args, None)
        vq = load_vqrae(args.reconstruct, args.device or "cpu")
        c = tokenizer_ceiling(vq, records, out, args.num_images, args.seed, args.batch_size)
        for tag, v in c["tags"].items():
            print(f"{tag:>16}: renders {v['renders']:.4f}  reconstructions {v['reconstructions']:.4f}  "
                  f"unigram noise {v['noise']:.4f}")
        print(f"{'overall':>16}: renders {c['renders']:.4f}  reconstructions {c['reconstructions']:.4f}  "
              f"unigram noise {c['noise']:.4f}" + (f"  (kept {c['kept']:.1%})" if c["kept"] is not None else ""))
        print(f"wrote {out / 'ceiling.json'}, {out / 'ceiling.md'} and per-folder results under {out}")
        return 0
    from vqrae.cli.generate import load_model

    records = _geneval_prompts(args, None)
    detector, colors, kind = make_plugins(args.detector, records, args.detector_weights, args.clip_weights,
                                          args.device)  # fail on missing weights before generating anything
    args.device_map = None
    model = load_model(args)
    sampling = {k: v for k, v in (("cfg_scale", args.cfg_scale), ("temperature", args.temperature),
                                  ("top_k", args.top_k), ("top_p", args.top_p)) if v is not None}
    t0 = time.perf_counter()
    stats = generate_folder(model, records, out, args.num_images, args.batch_size, args.seed, sampling)
    print(f"generated {stats['generated']} prompts ({stats['skipped']} already there) in {stats['seconds']:.1f} s"
          + (f", {stats['seconds_per_prompt']:.3f} s/prompt" if stats["seconds_per_prompt"] else ""))
    summary = score_folder(out, detector, colors)
    print(f"scored with the {kind} detector in {time.perf_counter() - t0 - stats['seconds']:.1f} s")
    _print_summary(summary, out)
    return 0
