"""What a GenEval detector returns, and the two plug-in interfaces the scorer calls.

    Detection(label="star", score=0.97, box=(x0, y0, x1, y1), mask=bool (H, W) array or None, color=None)

- A **detector** is any callable `detector(image: PIL.Image) -> list[Detection]` (every class, any order; the scorer
  thresholds, sorts and caps them). Boxes are xyxy in pixels of the image it was given; a mask, when there is one,
  is a boolean array of the image's (H, W).
- A **colour classifier** is any callable `classifier(image: PIL.Image, detection: Detection) -> str` returning one
  of the ten GenEval colours. It judges the detection's *masked crop* (`masked_crop`): as the official scorer does,
  the image is composited over a flat #999 grey outside the mask, then cropped to the box.

Built in: `vqrae.eval.geneval.shapes_detector` (ShapesWorld, deterministic, no weights) and
`vqrae.eval.geneval.hf_adapters` (a transformers Mask2Former/DETR detector and a CLIP colour classifier, from local
weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

CROP_BACKGROUND = (153, 153, 153)  # the official `bgcolor` default, "#999"


@dataclass
class Detection:
    """One detected object. `label`: class name (GenEval's `class`); `score`: confidence in [0, 1];
    `box`: (x0, y0, x1, y1) pixels; `mask`: (H, W) bool or None; `color`: the detector's own colour reading, if it
    makes one (informational: the scorer asks the colour classifier)."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = field(default=None, repr=False)
    color: str | None = None

    def __post_init__(self) -> None:
        self.score = float(self.score)
        self.box = tuple(float(v) for v in self.box[:4])
        if len(self.box) != 4:
            raise ValueError(f"Detection box must be (x0, y0, x1, y1), got {self.box!r}")
        if self.mask is not None:
            self.mask = np.asarray(self.mask, bool)

    def to_json(self) -> dict:
        out = {"class": self.label, "score": round(self.score, 4), "box": [round(v, 2) for v in self.box]}
        if self.color is not None:
            out["color"] = self.color
        return out


class Detector(Protocol):
    def __call__(self, image: Image.Image) -> list[Detection]: ...


class ColorClassifier(Protocol):
    def __call__(self, image: Image.Image, detection: Detection) -> str: ...


def crop_box(box: tuple[float, ...], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The integer pixel window PIL's `crop(box)` takes for a float box, clipped to the image and non-empty."""
    w, h = size
    x0, y0 = min(max(round(box[0]), 0), w - 1), min(max(round(box[1]), 0), h - 1)
    x1, y1 = max(min(round(box[2]), w), x0 + 1), max(min(round(box[3]), h), y0 + 1)
    return x0, y0, x1, y1


def masked_crop(image: Image.Image, detection: Detection,
                background: tuple[int, int, int] = CROP_BACKGROUND) -> Image.Image:
    """The official colour input: the image where the mask is set and flat grey elsewhere, cropped to the box (no
    mask: the plain box crop)."""
    image = image.convert("RGB")
    if detection.mask is not None:
        if detection.mask.shape != (image.height, image.width):
            raise ValueError(f"detection mask {detection.mask.shape} does not match the image "
                             f"{(image.height, image.width)}")
        blank = Image.new("RGB", image.size, background)
        image = Image.composite(image, blank, Image.fromarray(detection.mask.astype(np.uint8) * 255))
    return image.crop(crop_box(detection.box, image.size))


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """The official `compute_iou` (inclusive pixel boxes: +1 on each side length)."""
    def area(box):
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0.0
