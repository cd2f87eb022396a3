"""A deterministic detector for ShapesWorld (`vqrae.data.shapes`): class, colour, box and mask from the pixels alone.

1. Background: ShapesWorld backgrounds are flat, linear gradients or flat + mild noise, so a robust affine fit per
   channel (least squares, refitted on the pixels it explains) recovers them; a pixel is foreground when some
   channel differs from the fit by more than `fg_threshold` levels (fills are >= 64 levels off by construction).
2. Objects: 8-connected components of the foreground (objects never touch), at least `min_area` pixels.
3. Class: each of the six shapes is rendered (the renderer's own antialiased coverage) at the size and position
   that the component's coverage area and centroid imply for it, and compared with the component's soft coverage (alpha from the colour difference along
   fill - background); the best soft IoU wins. The detection's score is that IoU rescaled, (iou - 0.45) / 0.3 clipped
   to [0, 1]: a clean render fits at 0.9+ (score 1), a blob no shape explains falls below the 0.3 threshold.
4. Colour (`PaletteColorClassifier`, the colour plug-in): the median of the masked crop's pixels under the mask
   (eroded by a pixel when it is big enough, to skip the antialiased rim), nearest fill of `data.shapes.PALETTE`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from vqrae.data.shapes import PALETTE, SHAPES, ShapeObject, _coverage

from .detection import Detection, masked_crop

_NAMES = list(PALETTE)
_RGB = np.array(list(PALETTE.values()), np.float32)
def _unit_moments(shape: str, r: float = 100.0) -> tuple[float, float, float]:
    """(area, centroid x, centroid y) of a shape at radius 1, measured on the renderer's own coverage."""
    rows, cols, cov = _coverage(ShapeObject(shape, "red", (0, 0, 0), (128.0, 128.0), r), 256)
    ys, xs = np.mgrid[rows, cols].astype(np.float64) + 0.5
    area = cov.sum()
    return area / r**2, ((xs * cov).sum() / area - 128) / r, ((ys * cov).sum() / area - 128) / r


_MOMENTS = {s: _unit_moments(s) for s in SHAPES}


def nearest_palette_color(rgb: np.ndarray) -> str:
    return _NAMES[int(np.argmin(((_RGB - np.asarray(rgb, np.float32)) ** 2).sum(1)))]


def fit_background(img: np.ndarray, tol: float = 24.0, iters: int = 4) -> np.ndarray:
    """Robust per-channel affine fit c + a x + b y of the background (H, W, 3) float32."""
    h, w, _ = img.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    design = np.stack([np.ones_like(xs), xs / w - 0.5, ys / h - 0.5], -1).reshape(-1, 3)
    values = img.reshape(-1, 3)
    frame = np.zeros((h, w), bool)
    frame[[0, -1], :] = frame[:, [0, -1]] = True
    use = frame.reshape(-1)
    # Frame pixels that agree with the frame median start the fit (an object may graze the border).
    use = use & (np.abs(values - np.median(values[use], 0)).max(-1) < 2 * tol)
    coef = np.zeros((3, 3), np.float32)
    for _ in range(iters):
        if use.sum() < 3:
            break
        coef, *_ = np.linalg.lstsq(design[use], values[use], rcond=None)
        use = np.abs(values - design @ coef).max(-1) < tol
    return (design @ coef).reshape(h, w, 3)


def label_components(fg: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components: (labels with 0 = background, count). scipy when installed, else numpy."""
    try:
        from scipy import ndimage
    except ImportError:
        ndimage = None
    if ndimage is not None:
        labels, n = ndimage.label(fg, structure=np.ones((3, 3), int))
        return labels, int(n)
    h, w = fg.shape
    big = h * w + 1
    lab = np.where(fg, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:  # propagate the minimum label over the 8-neighbourhood until nothing changes
        pad = np.pad(lab, 1, constant_values=big)
        new = lab.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                new = np.minimum(new, pad[dy : dy + h, dx : dx + w])
        new = np.where(fg, new, big)
        if (new == lab).all():
            break
        lab = new
    uniq, inv = np.unique(np.where(fg, lab, 0), return_inverse=True)
    return inv.reshape(h, w), len(uniq) - 1


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    out[[0, -1], :] = out[:, [0, -1]] = False
    return out


class PaletteColorClassifier:
    """ShapesWorld colour plug-in: median colour under the detection's mask in its masked crop, nearest palette fill."""

    def __call__(self, image: Image.Image, detection: Detection) -> str:
        crop = np.asarray(masked_crop(image, detection), np.float32)
        if detection.mask is not None:
            x0, y0 = round(detection.box[0]), round(detection.box[1])
            inside = detection.mask[max(y0, 0) : max(y0, 0) + crop.shape[0], max(x0, 0) : max(x0, 0) + crop.shape[1]]
        else:  # no mask: what differs from the crop's border
            border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
            inside = np.abs(crop - np.median(border, 0)).max(-1) > 30
        if not inside.any():
            inside = np.ones(crop.shape[:2], bool)
        inner = _erode(inside)
        pixels = crop[inner if inner.sum() >= 3 else inside]
        return nearest_palette_color(np.median(pixels, 0))


class ShapesDetector:
    """`detector(image) -> list[Detection]` for ShapesWorld images (any size, RGB)."""

    def __init__(self, classes: tuple[str, ...] = SHAPES, fg_threshold: float = 30.0, min_area: int = 4,
                 max_objects: int = 32):
        unknown = [c for c in classes if c not in SHAPES]
        if unknown:
            raise ValueError(f"ShapesDetector: unknown shapes {unknown}; known {SHAPES}")
        self.classes, self.fg_threshold, self.min_area, self.max_objects = tuple(classes), fg_threshold, min_area, \
            max_objects
        self.color_classifier = PaletteColorClassifier()

    def __call__(self, image: Image.Image) -> list[Detection]:
        pil = image.convert("RGB")
        img = np.asarray(pil, np.float32)
        bg = fit_background(img)
        diff = img - bg
        fg = np.abs(diff).max(-1) > self.fg_threshold
        labels, n = label_components(fg)
        if n == 0:
            return []
        areas = np.bincount(labels.reshape(-1), minlength=n + 1)
        ids = [k for k in np.argsort(-areas[1:], kind="stable") + 1 if areas[k] >= self.min_area][: self.max_objects]
        out = []
        for k in ids:
            mask = labels == k
            det = self._classify(pil, img, bg, labels, mask, int(k))
            if det is not None:
                out.append(det)
        return out

    def _classify(self, pil, img, bg, labels, mask, k) -> Detection | None:
        h, w = mask.shape
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        det = Detection("", 0.0, (x0, y0, x1, y1), mask)
        color = self.color_classifier(pil, det)
        # Soft coverage of this object in a window around it: projection of (img - bg) on (fill - bg).
        wy0, wy1, wx0, wx1 = max(y0 - 2, 0), min(y1 + 2, h), max(x0 - 2, 0), min(x1 + 2, w)
        win_img, win_bg = img[wy0:wy1, wx0:wx1], bg[wy0:wy1, wx0:wx1]
        inner = _erode(mask)
        fill = np.median(img[inner if inner.sum() >= 3 else mask], 0)
        direction = fill[None, None] - win_bg
        alpha = (((win_img - win_bg) * direction).sum(-1) / np.maximum((direction ** 2).sum(-1), 1.0)).clip(0, 1)
        others = labels[wy0:wy1, wx0:wx1]
        alpha[(others != 0) & (others != k)] = 0
        # Each shape hypothesis fixes radius and centre from the coverage's area and centroid (no rotation in
        # ShapesWorld), so the right shape reproduces the coverage almost exactly.
        total = float(alpha.sum())
        if total <= 0:
            return None
        gy, gx = np.mgrid[wy0:wy1, wx0:wx1].astype(np.float64) + 0.5
        mx, my = float((gx * alpha).sum() / total), float((gy * alpha).sum() / total)
        best, best_iou = None, -1.0
        for shape in self.classes:
            area, ux, uy = _MOMENTS[shape]
            r = float(np.sqrt(total / area))
            obj = ShapeObject(shape, color, (0, 0, 0), (mx - ux * r, my - uy * r), r)
            iou = _template_iou(obj, alpha, (wy0, wy1, wx0, wx1), max(h, w))
            if iou > best_iou:
                best, best_iou = shape, iou
        score = float(np.clip((best_iou - 0.45) / 0.3, 0.0, 1.0))
        return Detection(best, score, (x0, y0, x1, y1), mask, color)


def _template_iou(obj: ShapeObject, alpha: np.ndarray, window: tuple[int, int, int, int], size: int) -> float:
    """Soft IoU between an object's rendered coverage and the observed coverage `alpha` of the window."""
    wy0, wy1, wx0, wx1 = window
    rows, cols, cov = _coverage(obj, size)
    tmpl = np.zeros((size, size), np.float32)
    tmpl[rows, cols] = cov
    tmpl = tmpl[wy0:wy1, wx0:wx1]
    outside = cov.sum() - tmpl.sum()  # coverage that fell outside the window counts as a miss
    inter = np.minimum(tmpl, alpha).sum()
    union = np.maximum(tmpl, alpha).sum() + max(outside, 0.0)
    return float(inter / union) if union > 0 else 0.0
