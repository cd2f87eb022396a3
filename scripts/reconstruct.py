"""`vqrae reconstruct`: encode an image to codes, decode it back, save original | reconstruction, print PSNR."""

from __future__ import annotations

import argparse
import os

from vqrae.cli import CLIError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="round-trip an image through a tokenizer (image -> codes -> image) and report PSNR",
        description="Tokenize an image into discrete codes, decode them back and write the original and the "
        "reconstruction side by side. Images whose size differs from the tokenizer's are resized (short side) and "
        "center-cropped by default; --no-resize refuses them instead.",
    )
    p.add_argument("--tokenizer", required=True, help="a VQRAE folder written by save_pretrained")
    p.add_argument("--image", required=True, help="input image (any format PIL reads)")
    p.add_argument("--out", required=True, help="output PNG: original | reconstruction")
    p.add_argument("--no-resize", action="store_true", help="fail on images that are not already the right size")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from vqrae.data.images import image_grid, image_to_tensor, load_image
    from vqrae.eval.metrics import psnr
    from vqrae.tokenizer import load_vqrae

    img = load_image(args.image)
    vq = load_vqrae(args.tokenizer, args.device)
    size = vq.image_size
    if img.size != (size, size):
        if args.no_resize:
            raise CLIError(f"{args.image} is {img.size[0]}x{img.size[1]}, the tokenizer takes {size}x{size} "
                           "(drop --no-resize to resize and center-crop)")
        print(f"note: {args.image} is {img.size[0]}x{img.size[1]}; resized (short side) and center-cropped to "
              f"{size}x{size}")
    pixels = image_to_tensor(img, size, crop="center").unsqueeze(0).to(args.device)
    with torch.no_grad():
        codes = vq.tokenize(pixels)
        recon = vq.decode(codes)
    score = float(psnr(pixels, recon)[0])
    pair = image_grid([pixels[0], recon[0]], columns=2)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    pair.save(args.out)
    h, w = codes.shape[1:]
    print(f"codes: {h}x{w} from a codebook of {vq.config.codebook_size}")
    print(f"PSNR: {score:.2f} dB")
    print(f"wrote {args.out} (original | reconstruction)")
    return 0
