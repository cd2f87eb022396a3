"""Reconstruction fidelity on ShapesWorld: does an object keep its shape, colour and box through the tokenizer?

PSNR hardly moves when an 8x8 patch of colour replaces a star: the shape is a few edge pixels. What text-to-image
needs is that the *object* survives, so this module measures objects, with the ShapesWorld detector
(`eval.geneval.shapes_detector`) as the judge and the scene's ground truth (`record["objects"]`) as the answer:

- `ObjectFidelity`: per ground-truth object, is there a detection whose box overlaps it (IoU >= `match_iou`,
  greedy one-to-one matching, best overlap first), and does that detection have the right shape (with a score above
  GenEval's keep threshold, so a blob no shape explains does not count), the right colour, and a box with IoU >=
  0.5? Measured on the reconstructions and on the originals (the detector's own ceiling, ~100%). Each image is also
  judged against its own GenEval record (`record["geneval"]`, every ShapesWorld scene satisfies one) with the
  official rules (`eval.geneval.scoring.judge`), per tag, for originals and reconstructions: the GenEval-style score
  the tokenizer alone allows, as `vqrae eval geneval --reconstruct` measures on prompt renders.
- `PatchShapeProbe`: where shape is lost. A least-squares linear read-out of each token's sub-patch label map
  (which shape class, or background, covers each 2x2 cell of its patch) from the continuous features and from the
  code vectors, scored as accuracy on the object cells of held-out tokens: the shape counterpart of the colour probe
  (`eval.probe`). High from features and low from codes: the quantizer drops shape; low from both: the encoder
  never kept it.

Records: items of `ShapesDataset` carry theirs ("record"); for a folder written by `vqrae data shapes`,
`RecordLookup` finds each image's record in the metadata.jsonl next to it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqrae.data.geneval import TAGS

MATCH_IOU = 0.3  # a detection and a ground-truth object are the same object from this box IoU on
BOX_IOU = 0.5  # a box is "right" from this IoU on (the usual detection threshold)


def match_objects(truth: Sequence[dict], detections: Sequence, min_iou: float = MATCH_IOU) -> list:
    """For each ground-truth object ({"box": [x0, y0, x1, y1]}), its matched detection or None: greedy one-to-one
    matching by box IoU, highest first, pairs below `min_iou` never matched."""
    from .geneval.detection import box_iou

    if not 0 < min_iou <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    pairs = sorted(((box_iou(tuple(t["box"]), d.box), i, j) for i, t in enumerate(truth)
                    for j, d in enumerate(detections)), reverse=True)
    out: list = [None] * len(truth)
    used: set[int] = set()
    for iou, i, j in pairs:
        if iou < min_iou:
            break
        if out[i] is None and j not in used:
            out[i] = detections[j]
            used.add(j)
    return out


class _Tally:
    """Per-object and per-tag counts of one image set (originals or reconstructions)."""

    def __init__(self):
        self.objects = self.found = self.shape = self.colour = self.box = 0
        self.tags: dict[str, list[bool]] = {}

    def result(self, prefix: str, suffix: str) -> dict:
        n = max(self.objects, 1)
        out = {f"{prefix}{k}{suffix}": v / n for k, v in (("shape_accuracy", self.shape), ("colour_accuracy",
               self.colour), ("box_accuracy", self.box), ("detected", self.found))}
        tags = {t: sum(v) / len(v) for t in [*TAGS, *sorted(set(self.tags) - set(TAGS))] if (v := self.tags.get(t))}
        if tags:
            out[f"{prefix}geneval{suffix}"] = sum(tags.values()) / len(tags)  # the official overall: mean of tags
        return out, tags


class ObjectFidelity:
    """Accumulates `update(original, reconstruction, record)` per image; `result()` gives the figures."""

    def __init__(self, detector=None, color_classifier=None, match_iou: float = MATCH_IOU, rules=None):
        from .geneval.scoring import ScoringRules
        from .geneval.shapes_detector import PaletteColorClassifier, ShapesDetector

        self.detector = detector or ShapesDetector()
        self.color_classifier = color_classifier or PaletteColorClassifier()
        self.match_iou = match_iou
        self.rules = rules or ScoringRules()
        self.recon, self.orig = _Tally(), _Tally()
        self.images = 0

    def _score(self, image: Image.Image, record: dict, tally: _Tally) -> None:
        from .geneval.detection import box_iou
        from .geneval.scoring import judge

        detections = self.detector(image)
        truth = record.get("objects") or []
        for t, d in zip(truth, match_objects(truth, detections, self.match_iou)):
            tally.objects += 1
            if d is None:
                continue
            tally.found += 1
            tally.shape += d.label == t["class"] and d.score > self.rules.threshold
            tally.colour += self.color_classifier(image, d) == t["color"]
            tally.box += box_iou(tuple(t["box"]), d.box) >= BOX_IOU
        geneval = record.get("geneval")
        if geneval:
            verdict = judge(geneval, detections, lambda d: self.color_classifier(image, d), self.rules)
            tally.tags.setdefault(geneval["tag"], []).append(verdict.correct)

    def update(self, original: Image.Image, reconstruction: Image.Image, record: dict) -> None:
        if not isinstance(record, dict) or "objects" not in record:
            raise ValueError("ObjectFidelity.update needs a ShapesWorld record (a dict with 'objects')")
        self._score(original, record, self.orig)
        self._score(reconstruction, record, self.recon)
        self.images += 1

    def result(self) -> dict:
        """Flat figures (reconstructions unprefixed, originals with `_originals`), plus `geneval_tags`:
        {tag: {"originals": score, "reconstructions": score}}; {} when nothing was measured."""
        if not self.images:
            return {}
        rec, rec_tags = self.recon.result("", "")
        orig, orig_tags = self.orig.result("", "_originals")
        out = {"fidelity_images": self.images, "fidelity_objects": self.recon.objects, **rec, **orig}
        if rec_tags:
            out["geneval_kept"] = out["geneval"] / out["geneval_originals"] if out["geneval_originals"] else None
            out["geneval_tags"] = {t: {"originals": orig_tags[t], "reconstructions": rec_tags[t]} for t in orig_tags}
        return out


class RecordLookup:
    """Image path -> its ShapesWorld record, from the metadata.jsonl of the folder (or its parent) holding it."""

    def __init__(self):
        self._by_path: dict[str, dict] = {}
        self._read: set[Path] = set()

    def __call__(self, name: str) -> dict | None:
        path = Path(name).resolve()
        key = str(path)
        if key not in self._by_path:
            for folder in (path.parent, path.parent.parent):
                meta = folder / "metadata.jsonl"
                if meta.is_file() and meta not in self._read:
                    self._read.add(meta)
                    with open(meta, encoding="utf-8") as f:
                        for line in f:
                            if line.strip():
                                rec = json.loads(line)
                                rel = rec.get("file_name") or rec.get("image")
                                if isinstance(rel, str) and "objects" in rec:
                                    self._by_path[str((folder / rel).resolve())] = rec
        return self._by_path.get(key)


def label_map(record: dict, size: int) -> np.ndarray:
    """(size, size) uint8: 0 background, 1 + SHAPES.index(class) under each object's mask (masks from the record's
    RLE; a record rendered at another size is resized with nearest neighbours)."""
    from vqrae.data.shapes import SHAPES, rle_to_mask

    out = np.zeros((size, size), np.uint8)
    for obj in record.get("objects") or []:
        mask = rle_to_mask(obj["mask"])
        if mask.shape != (size, size):
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127
        out[mask] = 1 + SHAPES.index(obj["class"])
    return out


class PatchShapeProbe:
    """Linear read-out of each token's sub-patch shape labels from features and from code vectors (see module doc).

    Targets: per token, the one-hot class (background + 6 shapes) of each of its `cells` x `cells` sub-cells (the
    majority label of the cell's pixels). The fit is least squares on the first half of the tokens; on the second
    half, `shape_probe_*` is the accuracy of the best-scoring shape on the object cells (chance about 1/6) and
    `cover_probe_*` the IoU of the cells read as object (best score not background) with the true object cells:
    what the token says about which shape, and about where inside the patch.
    """

    def __init__(self, max_tokens: int = 16384, cells: int = 4, seed: int = 0):
        self.max_tokens, self.cells = max_tokens, cells
        self.generator = torch.Generator().manual_seed(seed)
        self.features, self.codes, self.labels = [], [], []
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count >= self.max_tokens

    def update(self, labels: torch.Tensor, features: torch.Tensor, code_vectors: torch.Tensor) -> None:
        """labels (B, H, W) long class maps (`label_map`); features and code_vectors (B, h*w, d) in raster order."""
        from vqrae.data.shapes import SHAPES

        if self.full:
            return
        b, n, d = features.shape
        grid = math.isqrt(n)
        size = labels.shape[-1]
        if size % (grid * self.cells):
            raise ValueError(f"PatchShapeProbe: {size} px images do not split into {grid}x{grid} patches of "
                             f"{self.cells}x{self.cells} cells")
        onehot = torch.nn.functional.one_hot(labels.long(), len(SHAPES) + 1).permute(0, 3, 1, 2).float()
        cells = torch.nn.functional.adaptive_avg_pool2d(onehot, grid * self.cells).argmax(1)  # (B, g*c, g*c)
        cells = cells.view(b, grid, self.cells, grid, self.cells).permute(0, 1, 3, 2, 4).reshape(b * n, -1)
        keep = torch.randperm(b * n, generator=self.generator)[: self.max_tokens - self.count]
        self.features.append(features.reshape(-1, d)[keep.to(features.device)].float().cpu())
        self.codes.append(code_vectors.reshape(-1, d)[keep.to(features.device)].float().cpu())
        self.labels.append(cells[keep.to(cells.device)].cpu())
        self.count += len(keep)

    def result(self) -> dict[str, float]:
        """{"shape_probe_features", "shape_probe_codes", "cover_probe_features", "cover_probe_codes"}; {} with too
        few tokens or object cells."""
        from vqrae.data.shapes import SHAPES

        half = self.count // 2
        if not self.count or half < 4 * (self.features[0].shape[1] + 1):
            return {}
        labels = torch.cat(self.labels)
        k = len(SHAPES) + 1
        target = torch.nn.functional.one_hot(labels[:half], k).reshape(half, -1).double()
        test = labels[half:]
        objects = test > 0
        if objects.sum() < 10 or (labels[:half] > 0).sum() < 10:
            return {}
        out = {}
        for name, parts in (("features", self.features), ("codes", self.codes)):
            x = torch.cat(parts).double()
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
            weights = torch.linalg.lstsq(x[:half], target).solution
            scores = (x[half:] @ weights).view(len(test), -1, k)
            shape = scores[..., 1:].argmax(-1) + 1  # which shape, asked of object cells only
            out[f"shape_probe_{name}"] = float((shape == test)[objects].double().mean())
            cover = scores.argmax(-1) > 0  # which cells are object at all: IoU with the true object cells
            out[f"cover_probe_{name}"] = float((cover & objects).sum() / (cover | objects).sum())
        return out


__all__ = ["BOX_IOU", "MATCH_IOU", "ObjectFidelity", "PatchShapeProbe", "RecordLookup", "label_map",
           "match_objects"]
