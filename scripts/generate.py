"""`vqrae generate`: text-to-image with a unified model; PNGs, one grid per prompt and a JSONL of settings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vqrae.cli import CLIError


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a unified model: a folder written by UnifiedModel.save_pretrained, or a hub id")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--device-map", default=None,
                   help="spread/offload a large LLM with accelerate, e.g. 'auto' (overrides --device for the LLM)")


def add_draw_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """Image sampling options (`prefix` namespaces them, e.g. 'draw-' in `vqrae chat`). Every default is the
    model's own (its sampling_config.json), so they are None here."""
    p.add_argument(f"--{prefix}cfg-scale", type=float, default=None,
                   help="classifier-free guidance scale (default: the model's, 4.0 unless it says otherwise; "
                   "1 = conditional logits)")
    p.add_argument(f"--{prefix}no-cfg", action="store_true", help="no guidance: skip the unconditional rows")
    p.add_argument(f"--{prefix}cfg-schedule", default=None, choices=["constant", "linear"],
                   help="constant scale, or a linear ramp from 1 to the scale over the image (default: the model's)")
    p.add_argument(f"--{prefix}temperature", type=float, default=None, help="0 = greedy (default: the model's)")
    p.add_argument(f"--{prefix}top-k", type=int, default=None, help="keep the k most likely codes (0 = off)")
    p.add_argument(f"--{prefix}top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")


def draw_settings(args: argparse.Namespace, prefix: str = "") -> dict:
    """The keyword arguments of `generate_images` chosen by `add_draw_arguments` (None: the model's default),
    the given ones validated."""
    from vqrae.unified_model import validate_sampling

    get = lambda name: getattr(args, prefix + name)
    s = {"cfg_scale": get("cfg_scale"), "cfg_schedule": get("cfg_schedule"), "temperature": get("temperature"),
         "top_k": get("top_k"), "top_p": get("top_p"), "guidance": False if get("no_cfg") else None}
    validate_sampling(**{k: v for k, v in s.items() if v is not None and k != "guidance"})
    return s


def load_model(args: argparse.Namespace):
    import torch

    from vqrae.unified_model import UnifiedModel

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return UnifiedModel.from_pretrained(args.model, device=device, dtype=dtype, device_map=args.device_map)


def read_prompts(path: str) -> list[str]:
    """One prompt per line, or JSONL records with a "prompt" (GenEval metadata) or "caption" field."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    prompts = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if p.suffix == ".jsonl":
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from exc
            text = rec.get("prompt", rec.get("caption")) if isinstance(rec, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{n}: no non-empty 'prompt' or 'caption' field")
            line = text.strip()
        prompts.append(line)
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="text-to-image with a unified model",
        description="Generate images for one prompt or a file of prompts (one per line, or JSONL with 'prompt'). "
        "Writes OUT/pNNNN_iNN.png, OUT/pNNNN_grid.png and OUT/generations.jsonl (one line per image with its "
        "prompt, seed and settings). Image i of prompt p uses seed SEED + p * NUM_IMAGES + i.",
    )
    add_model_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt")
    src.add_argument("--prompts", help="a file of prompts (.txt: one per line; .jsonl: 'prompt' field)")
    p.add_argument("--num-images", type=int, default=None, help="images per prompt (default: the model's, 4)")
    add_draw_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward batch (default 8)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqrae.data.images import image_grid

    settings = draw_settings(args)
    if args.num_images is not None and args.num_images < 1:
        raise CLIError(f"--num-images must be >= 1, got {args.num_images}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.prompt is not None and not args.prompt.strip():
        raise CLIError("--prompt is empty")
    prompts = [args.prompt.strip()] if args.prompt is not None else read_prompts(args.prompts)
    model = load_model(args)
    out = model.generate_images(prompts, num_images=args.num_images, seed=args.seed, batch_size=args.batch_size,
                                progress=True, **settings)
    num_images = out.settings["num_images"]
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "generations.jsonl", "w", encoding="utf-8") as log:
        for p, (prompt, images) in enumerate(zip(prompts, out.images)):
            grid = root / f"p{p:04d}_grid.png"
            image_grid(images).save(grid)
            for i, im in enumerate(images):
                path = root / f"p{p:04d}_i{i:02d}.png"
                im.save(path)
                rec = {"prompt": prompt, "prompt_index": p, "image_index": i, "file": path.name, "grid": grid.name,
                       "model": str(args.model), **out.settings, "base_seed": args.seed, "seed": out.seeds[p][i]}
                log.write(json.dumps(rec) + "\n")
    print(f"wrote {len(prompts) * num_images} image(s) and {len(prompts)} grid(s) to {root}")
    return 0
