"""Where an encoder keeps an object's shape: ridge probes from its patch features to each object's class (or colour).

    python -m vqrae.eval.shape_probe runs/qs-m2/tokenizer-stage2/final            # a VQRAE folder
    python -m vqrae.eval.shape_probe runs/qs-m2/encoder/final --what colour       # or a SigLIP (stage 0) folder

Three read-outs per object of ShapesWorld scenes: the feature at the object's centre, the mean over its box, and the
5x5 window of features around its centre (concatenated). A shape read from the centre means each position knows its
object's shape (what an LLM finds with one attention lookup); one read only from the window means the shape lives
across neighbouring positions and a reader must assemble it.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


def _encoder(folder: str):
    from vqrae.tokenizer import load_vqrae

    try:
        return load_vqrae(folder).eval().encode
    except ValueError:  # not a VQRAE: a SigLIP vision (stage 0) folder
        from transformers import SiglipVisionModel

        model = SiglipVisionModel.from_pretrained(folder).eval()
        return lambda px: model(pixel_values=(px - 0.5) / 0.5).last_hidden_state


@torch.no_grad()
def _collect(encode, split: str, num: int, size: int, what: str):
    from vqrae.data.readers import ShapesDataset
    from vqrae.data.shapes import ShapesConfig

    cfg = ShapesConfig(size=size)
    labels = list(cfg.classes if what == "shape" else cfg.colors)
    data = ShapesDataset(num, cfg, seed=0, split=split, size=size)
    xs, ys = {"centre": [], "box mean": [], "5x5 window": []}, []
    for start in range(0, num, 64):
        items = [data[i] for i in range(start, min(num, start + 64))]
        feats = encode(torch.stack([it["pixels"] for it in items]))
        side = int(feats.shape[1] ** 0.5)
        patch = size // side
        for b, it in enumerate(items):
            grid = feats[b].reshape(side, side, -1)
            padded = F.pad(grid.permute(2, 0, 1), (2, 2, 2, 2)).permute(1, 2, 0)
            for o in it["record"]["objects"]:
                (cx, cy), (x0, y0, x1, y1) = o["center"], o["box"]
                r, c = min(int(cy) // patch, side - 1), min(int(cx) // patch, side - 1)
                xs["centre"].append(grid[r, c])
                xs["box mean"].append(grid[y0 // patch:(y1 - 1) // patch + 1,
                                           x0 // patch:(x1 - 1) // patch + 1].reshape(-1, grid.shape[-1]).mean(0))
                xs["5x5 window"].append(padded[r:r + 5, c:c + 5].reshape(-1))
                ys.append(labels.index(o["class"] if what == "shape" else o["color"]))
    return {k: torch.stack(v).double() for k, v in xs.items()}, torch.tensor(ys), len(labels)


def shape_probe(encode, train_images: int = 1500, val_images: int = 400, size: int = 64, what: str = "shape",
                ridge: float = 10.0) -> dict[str, float]:
    """Held-out accuracy of a ridge probe per read-out, and the chance level."""
    xtr, ytr, k = _collect(encode, "train", train_images, size, what)
    xva, yva, _ = _collect(encode, "val", val_images, size, what)
    out = {"objects_train": len(ytr), "objects_val": len(yva), "chance": float(torch.bincount(yva, minlength=k).max()
                                                                                 / len(yva))}
    target = F.one_hot(ytr, k).double()
    for name in xtr:
        a = torch.cat([xtr[name], torch.ones(len(ytr), 1, dtype=torch.double)], 1)
        b = torch.cat([xva[name], torch.ones(len(yva), 1, dtype=torch.double)], 1)
        w = torch.linalg.solve(a.T @ a + ridge * torch.eye(a.shape[1], dtype=torch.double), a.T @ target)
        out[name] = float(((b @ w).argmax(1) == yva).double().mean())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a VQRAE tokenizer folder or a SigLIP vision encoder folder")
    p.add_argument("--what", choices=("shape", "colour"), default="shape")
    p.add_argument("--train-images", type=int, default=1500)
    p.add_argument("--val-images", type=int, default=400)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = shape_probe(_encoder(args.folder), args.train_images, args.val_images, args.size, args.what)
    for k, v in result.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
