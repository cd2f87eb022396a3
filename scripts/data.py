"""`vqrae data`: generate ShapesWorld, build a GenEval-style prompt set, check a data set for unreadable images.

    vqrae data shapes --out runs/shapes --num 20000 --size 64 --seed 0
    vqrae data prompts --out runs/shapes/geneval --seed 0
    vqrae data check path/to/images
"""

from __future__ import annotations

import argparse
import json
import logging

logger = logging.getLogger(__name__)


def _shapes(args: argparse.Namespace) -> int:
    from vqrae.data.shapes import ShapesConfig
    from vqrae.data.shapes_writer import split_sizes, write_shapes

    cfg = ShapesConfig(size=args.size)
    sizes = split_sizes(args.num, args.val_frac, args.test_frac)
    formats = ("folder", "hf") if args.format == "both" else (args.format,)
    info = write_shapes(args.out, cfg, sizes, seed=args.seed, workers=args.workers, formats=formats)
    n = sum(sizes.values())
    print(f"wrote {n} images ({', '.join(f'{k} {v}' for k, v in sizes.items())}) to {args.out} "
          f"in {info['seconds']:.1f} s ({n / max(info['seconds'], 1e-9):.0f} images/s)")
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from vqrae.data.shapes import ShapesConfig
    from vqrae.data.shapes_writer import write_prompt_set

    records = write_prompt_set(args.out, ShapesConfig(size=args.size), seed=args.seed,
                               references=not args.no_references, workers=args.workers)
    print(f"wrote {len(records)} GenEval prompts to {args.out}/evaluation_metadata.jsonl")
    return 0


def _check(args: argparse.Namespace) -> int:
    from vqrae.data.readers import ImageDataset, open_source

    report = ImageDataset(open_source(args.path, args.kind, args.split, args.image_root), size=None).scan()
    for reason in report["skipped"].values():
        logger.warning("unreadable: %s", reason)
    print(json.dumps({k: v if k != "skipped" else len(v) for k, v in report.items()}))
    if report["readable"] == 0:
        raise ValueError(f"nothing readable in {args.path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="generate ShapesWorld data, GenEval prompt sets; check data sets")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = sub.add_parser("shapes", help="render ShapesWorld train/val/test splits (image folders + datasets)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--num", type=int, default=20000, help="images in all splits together (default 20000)")
    s.add_argument("--size", type=int, default=64, help="image side in pixels, 32..512 (default 64)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-frac", type=float, default=0.05)
    s.add_argument("--test-frac", type=float, default=0.05)
    s.add_argument("--format", choices=("both", "folder", "hf"), default="both")
    s.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    s.set_defaults(func=_shapes)

    g = sub.add_parser("prompts", help="write a GenEval-style evaluation_metadata.jsonl for ShapesWorld")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--size", type=int, default=64, help="size of the reference scenes")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-references", action="store_true", help="skip rendering one reference scene per prompt")
    g.add_argument("--workers", type=int, default=2)
    g.set_defaults(func=_prompts)

    c = sub.add_parser("check", help="decode every image of a data set and report the unreadable ones")
    c.add_argument("path", help="image folder, record file, datasets dataset or tar shard(s)")
    c.add_argument("--kind", choices=("image", "caption", "conversation"), default="image")
    c.add_argument("--split", default=None)
    c.add_argument("--image-root", default=None)
    c.set_defaults(func=_check)
