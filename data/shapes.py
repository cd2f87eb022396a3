"""ShapesWorld: coloured shapes on varied backgrounds, with exact ground truth, captions, VQA and GenEval metadata.

The project's embedded world (see DESIGN.md): small enough to train the whole pipeline on a CPU, rich enough that
reconstruction, VQA and text-to-image are not trivial. A sample is a pure function of (config, seed, split, index).

    cfg = ShapesConfig(size=64)
    sample = render_sample(cfg, seed=0, split="train", index=7)
    sample.image            # (H, W, 3) uint8
    sample.labels           # (H, W) uint8: 0 = background, k = objects[k - 1]
    sample.record           # JSON-able dict, the metadata.jsonl / datasets row (see data/__init__.py)

Rendering is vectorised numpy: each object's signed distance (in pixels) is evaluated once per pixel of its box and
turned into coverage `clip(0.5 - d, 0, 1)`, which antialiases edges without supersampling. Objects never overlap
(their boxes are kept 2 px apart), so every object is one connected component of its own colour: counting and
colour questions have exactly one right answer, and a shape detector can recover the ground truth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vqrae.data.geneval import GENEVAL_COLORS, RELATIONS, TAGS, geneval_check, make_record, stable_relations

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
# Fill colours, chosen far from each other and from the grey-ish backgrounds (see _sample_background).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "orange": (245, 135, 15),
    "yellow": (240, 220, 30),
    "green": (35, 160, 60),
    "blue": (35, 75, 225),
    "purple": (135, 45, 185),
    "pink": (250, 135, 200),
    "brown": (120, 70, 30),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
BACKGROUNDS = ("plain", "gradient", "noise")
MIN_CONTRAST = 64  # fill vs background, in 8-bit levels of the most different channel
# Part of every sample's seed, so splits never share a random stream ("geneval": reference scenes of a prompt set).
SPLITS = {"train": 0, "val": 1, "test": 2, "geneval": 3}
SCENE_TAGS = (*TAGS, "scene")  # "scene": 1 to max_objects free objects, described by the full captions


def choice(rng: np.random.Generator, seq):
    """One element of a sequence (rng.choice converts to an array first: 10x slower on short lists)."""
    return seq[int(rng.integers(len(seq)))]


def sample(rng: np.random.Generator, seq, k: int) -> list:
    """k distinct elements of a sequence, in random order."""
    return [seq[i] for i in rng.permutation(len(seq))[:k]]


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    ang = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    rad = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)


_a = 0.34  # half-width of a cross arm
# Unit polygons (half-extent 1, y down); the circle is analytic.
POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float) * 0.85,
    "triangle": np.array([(0, -1), (1, 0.8), (-1, 0.8)], float),
    "star": _star(),
    "diamond": np.array([(0, -1), (0.72, 0), (0, 1), (-0.72, 0)], float),
    "cross": np.array([(-_a, -1), (_a, -1), (_a, -_a), (1, -_a), (1, _a), (_a, _a), (_a, 1), (-_a, 1), (-_a, _a),
                       (-1, _a), (-1, -_a), (-_a, -_a)], float),
}


@dataclass
class ShapesConfig:
    size: int = 64  # image side in pixels, 32..512
    classes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = GENEVAL_COLORS
    max_objects: int = 4
    min_scale: float = 0.09  # object half-extent as a fraction of the image side
    max_scale: float = 0.2
    backgrounds: tuple[str, ...] = BACKGROUNDS
    color_jitter: int = 10  # per-channel fill jitter, so colour is a region, not a single value
    noise_std: float = 5.0  # grey noise of "noise" backgrounds, in 8-bit levels
    # How often each kind of scene is drawn; the GenEval tags make scenes that their prompts describe exactly.
    tag_weights: dict[str, float] = field(default_factory=lambda: {t: 1.0 for t in TAGS} | {"scene": 2.0})

    def __post_init__(self) -> None:
        self.classes, self.colors, self.backgrounds = tuple(self.classes), tuple(self.colors), tuple(self.backgrounds)
        if not 32 <= int(self.size) <= 512:
            raise ValueError(f"ShapesConfig.size must be between 32 and 512, got {self.size}")
        unknown = [c for c in self.classes if c != "circle" and c not in POLYGONS]
        unknown += [c for c in self.colors if c not in PALETTE]
        unknown += [b for b in self.backgrounds if b not in BACKGROUNDS]
        unknown += [t for t in self.tag_weights if t not in SCENE_TAGS]
        if unknown:
            raise ValueError(f"ShapesConfig: unknown shape/colour/background/tag names {unknown}")
        if len(self.classes) < 2 or len(self.colors) < 2 or not 2 <= self.max_objects <= 4:
            raise ValueError("ShapesConfig needs >= 2 classes, >= 2 colours and max_objects in 2..4")
        if not 0 < self.min_scale <= self.max_scale <= 0.25:
            raise ValueError("ShapesConfig needs 0 < min_scale <= max_scale <= 0.25")


@dataclass
class ShapeObject:
    shape: str
    color: str
    rgb: tuple[int, int, int]
    center: tuple[float, float]  # (x, y) in pixels
    radius: float  # half-extent in pixels


@dataclass
class Background:
    kind: str
    colors: list[tuple[int, int, int]]  # one colour, or the two ends of the gradient
    angle: float = 0.0  # gradient direction, radians
    noise_seed: int = 0
    noise_std: float = 0.0


@dataclass
class Sample:
    image: np.ndarray
    labels: np.ndarray
    record: dict[str, Any]


# ---------------------------------------------------------------------------------------------------- rendering


def _edges(verts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per edge i (from vertex i to vertex i-1): start x, start y, direction x, y, 1/|e|^2, end y."""
    vx, vy = verts[:, 0], verts[:, 1]
    ex, ey = np.roll(vx, 1) - vx, np.roll(vy, 1) - vy
    return tuple(a.astype(np.float32) for a in (vx, vy, ex, ey, 1.0 / (ex * ex + ey * ey), np.roll(vy, 1)))


_EDGES = {name: _edges(v) for name, v in POLYGONS.items()}


def _polygon_sdf(px: np.ndarray, py: np.ndarray, shape: str, r: float) -> np.ndarray:
    """Signed distance (negative inside) from points (px, py) to polygon `shape` scaled by r, vectorised over points
    and edges: distance to the nearest edge segment, sign from the crossing number."""
    vx, vy, ex, ey, inv, vy_end = _EDGES[shape]
    vx, vy, ex, ey, inv, vy_end = vx * r, vy * r, ex * r, ey * r, inv / (r * r), vy_end * r
    px, py = px[..., None], py[..., None]
    wx, wy = px - vx, py - vy
    t = np.clip((wx * ex + wy * ey) * inv, 0.0, 1.0)
    d2 = ((wx - ex * t) ** 2 + (wy - ey * t) ** 2).min(-1)
    c1, c2, c3 = py >= vy, py < vy_end, ex * wy > ey * wx
    inside = ((c1 == c2) & (c2 == c3)).sum(-1) % 2 == 1
    return np.where(inside, -1.0, 1.0) * np.sqrt(d2)


def _coverage(obj: ShapeObject, size: int) -> tuple[slice, slice, np.ndarray]:
    """Antialiased coverage of one object over its pixel window: (rows, cols, coverage in [0, 1])."""
    cx, cy = obj.center
    r = obj.radius
    x0, x1 = max(int(cx - r) - 1, 0), min(math.ceil(cx + r) + 1, size)
    y0, y1 = max(int(cy - r) - 1, 0), min(math.ceil(cy + r) + 1, size)
    px = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    py = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    if obj.shape == "circle":
        sdf = np.sqrt(px * px + py * py) - r
    else:
        px, py = np.broadcast_arrays(px, py)
        sdf = _polygon_sdf(px, py, obj.shape, r)
    return slice(y0, y1), slice(x0, x1), np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)


def render_background(bg: Background, size: int) -> np.ndarray:
    c0 = np.asarray(bg.colors[0], np.float32)
    if bg.kind == "gradient":
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        t = math.cos(bg.angle) * coords[None, :] + math.sin(bg.angle) * coords[:, None]
        t = (t - t.min()) / (t.max() - t.min())
        c1 = np.asarray(bg.colors[1], np.float32)
        return c0 + t[..., None] * (c1 - c0)
    img = np.broadcast_to(c0, (size, size, 3)).astype(np.float32)
    if bg.kind == "noise":
        noise = np.random.default_rng(bg.noise_seed).standard_normal((size, size, 1), dtype=np.float32)
        img = img + noise * bg.noise_std
    return img


def render(objects: list[ShapeObject], background: Background, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene: (H, W, 3) uint8 image and (H, W) uint8 labels (k = objects[k - 1], 0 = background)."""
    img = render_background(background, size)
    labels = np.zeros((size, size), np.uint8)
    for k, obj in enumerate(objects, 1):
        rows, cols, cov = _coverage(obj, size)
        a = cov[..., None]
        img[rows, cols] = img[rows, cols] * (1.0 - a) + np.asarray(obj.rgb, np.float32) * a
        labels[rows, cols][cov >= 0.5] = k
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


# ------------------------------------------------------------------------------------------------ ground truth


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths, starting with a run of zeros)."""
    flat = np.asarray(mask, bool).T.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rle_to_mask(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    return np.repeat(values, rle["counts"]).reshape(w, h).T.copy()


def ground_truth(objects: list[ShapeObject], labels: np.ndarray) -> list[dict]:
    """Per object: class, colour, fill rgb, tight box [x0, y0, x1, y1) of its visible pixels, centre, radius, area and
    mask (COCO RLE). This is what a deterministic shape detector is scored against."""
    out = []
    for k, obj in enumerate(objects, 1):
        mask = labels == k
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if xs.size else [0, 0, 0, 0]
        out.append({
            "class": obj.shape,
            "color": obj.color,
            "rgb": list(obj.rgb),
            "box": box,
            "center": [round(obj.center[0], 2), round(obj.center[1], 2)],
            "radius": round(obj.radius, 2),
            "area": int(xs.size),
            "mask": mask_to_rle(mask),
        })
    return out


# ------------------------------------------------------------------------------------------------ scene sampling


def _sample_background(rng: np.random.Generator, cfg: ShapesConfig, fills: list[tuple[int, int, int]]) -> Background:
    """A low-saturation mid-tone background, at least MIN_CONTRAST levels (in some channel) from every fill colour,
    so every object edge is visible and a detector can separate objects from the background."""
    kind = choice(rng, cfg.backgrounds)
    fills_arr = np.asarray(fills, np.float32).reshape(-1, 1, 3)

    def tones(n: int) -> list[tuple[int, int, int]]:
        for _ in range(100):
            levels = rng.uniform(85, 185, (n, 1)) + rng.uniform(-12, 12, (n, 3))
            probe = np.concatenate([levels, levels.mean(0, keepdims=True)])  # a gradient's middle too
            if (np.abs(probe[None] - fills_arr).max(-1) >= MIN_CONTRAST).all():
                break
        return [tuple(int(v) for v in np.rint(t)) for t in levels]

    if kind == "gradient":
        return Background(kind, tones(2), angle=float(rng.uniform(0, 2 * math.pi)))
    if kind == "noise":
        std = float(rng.uniform(0.5, 1.0) * cfg.noise_std)
        return Background(kind, tones(1), noise_seed=int(rng.integers(2**31)), noise_std=round(std, 2))
    return Background(kind, tones(1))


def _layout(rng: np.random.Generator, n: int, cfg: ShapesConfig) -> list[tuple[float, float, float]] | None:
    """n non-overlapping (cx, cy, r) with boxes 2 px apart and 1 px from the border; None if it did not fit."""
    s = cfg.size
    r_max = cfg.max_scale * s * (1.0 if n <= 2 else 0.8)
    r_min = min(cfg.min_scale * s, r_max)
    placed: list[tuple[float, float, float]] = []
    for _ in range(n):
        r = float(rng.uniform(r_min, r_max))
        for _try in range(60):
            cx, cy = rng.uniform(r + 1.5, s - r - 1.5, 2)
            if all(abs(cx - x) >= r + q + 2 or abs(cy - y) >= r + q + 2 for x, y, q in placed):
                placed.append((float(cx), float(cy), r))
                break
        else:
            return None
    return placed


def _box(obj: ShapeObject) -> list[float]:
    """Analytic box of an object (the rendered mask's box differs by under a pixel)."""
    cx, cy = obj.center
    v = POLYGONS[obj.shape] * obj.radius if obj.shape != "circle" else np.array([[-1, -1], [1, 1]]) * obj.radius
    return [cx + v[:, 0].min(), cy + v[:, 1].min(), cx + v[:, 0].max(), cy + v[:, 1].max()]


def _jitter(rng: np.random.Generator, color: str, amount: int) -> tuple[int, int, int]:
    base = np.asarray(PALETTE[color]) + rng.integers(-amount, amount + 1, 3)
    return tuple(int(v) for v in np.clip(base, 0, 255))


def _objects_for_tag(rng: np.random.Generator, tag: str, cfg: ShapesConfig) -> tuple[dict, list[tuple[str, str]]]:
    """A GenEval record for the tag ({} for a free scene) and the (class, colour) list that realises it."""

    def pick(options, k=1):
        return sample(rng, options, k)

    colors = cfg.colors
    if tag in ("single_object", "colors"):
        c, k = pick(cfg.classes)[0], pick(colors)[0]
        inc = [{"class": c, "count": 1} | ({"color": k} if tag == "colors" else {})]
        return make_record(tag, inc), [(c, k)]
    if tag == "counting":
        c, n = pick(cfg.classes)[0], int(rng.integers(2, cfg.max_objects + 1))
        return make_record(tag, [{"class": c, "count": n}]), [(c, choice(rng, colors)) for _ in range(n)]
    if tag in ("two_object", "position", "color_attr"):
        (a, b), (ka, kb) = pick(cfg.classes, 2), pick(colors, 2)
        inc = [{"class": a, "count": 1}, {"class": b, "count": 1}]
        if tag == "color_attr":
            inc[0]["color"], inc[1]["color"] = ka, kb
        if tag == "position":
            inc[1]["position"] = [choice(rng, RELATIONS), 0]
        return make_record(tag, inc), [(a, ka), (b, kb)]
    n = int(rng.integers(1, cfg.max_objects + 1))
    return {}, [(choice(rng, cfg.classes), choice(rng, colors)) for _ in range(n)]


def sample_scene(rng: np.random.Generator, cfg: ShapesConfig, tag: str | None = None, record: dict | None = None):
    """Draw a scene of `tag` (drawn from cfg.tag_weights if None), or one that satisfies a GenEval `record`.

    Returns (tag, geneval record or {}, background, image, labels, ground truth). A scene for a record contains
    exactly the objects it includes, so its prompt is a complete description.
    """
    if record is not None:
        unknown = {i["class"] for i in record["include"]} - set(cfg.classes)
        unknown |= {i["color"] for i in record["include"] if "color" in i} - set(cfg.colors)
        if unknown or sum(i["count"] for i in record["include"]) > cfg.max_objects:
            raise ValueError(f"ShapesWorld cannot draw {record.get('prompt')!r}: unknown names {sorted(unknown)} "
                             f"or more than {cfg.max_objects} objects")
    elif tag is None:
        tags = list(cfg.tag_weights)
        cum = np.cumsum([cfg.tag_weights[t] for t in tags])
        tag = tags[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(tags) - 1)]
    for _ in range(100):
        if record is not None:
            tag, rec = record["tag"], record
            specs = [(i["class"], i.get("color") or choice(rng, cfg.colors)) for i in rec["include"]
                     for _ in range(i["count"])]
        else:
            rec, specs = _objects_for_tag(rng, tag, cfg)
        layout = _layout(rng, len(specs), cfg)
        if layout is None:
            continue
        objects = [ShapeObject(c, k, _jitter(rng, k, cfg.color_jitter), (x, y), r) for (c, k), (x, y, r) in
                   zip(specs, layout)]
        if rec and not _satisfies(rec, [{"class": o.shape, "color": o.color, "box": _box(o)} for o in objects]):
            continue  # cheap test on analytic boxes first: most failing layouts are never rendered
        background = _sample_background(rng, cfg, [o.rgb for o in objects])
        image, labels = render(objects, background, cfg.size)
        gt = ground_truth(objects, labels)
        # Layouts are drawn blindly; keep one whose rendered boxes satisfy the record.
        if all(o["area"] > 0 for o in gt) and (not rec or _satisfies(rec, gt)):
            return tag, rec, background, image, labels, gt
    raise ValueError(f"could not lay out a ShapesWorld scene for {record or tag} at size {cfg.size}")


def _satisfies(rec: dict, objects: list[dict]) -> bool:
    """The official GenEval check, with the asked relations required to survive 2 px of box error."""
    if not geneval_check(rec, objects)[0]:
        return False
    first: dict[str, dict] = {}
    for o in objects:
        first.setdefault(o["class"], o)
    inc = rec["include"]
    return all(i["position"][0] in stable_relations(first[i["class"]]["box"], first[inc[t]["class"]]["box"])[0]
               for i in inc if "position" in i for t in [i["position"][1]])


def sample_rng(seed: int, split: str = "train", index: int = 0) -> np.random.Generator:
    """The random stream of one sample: independent of worker count and disjoint between splits."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], int(index)]))


def render_sample(cfg: ShapesConfig, seed: int, split: str = "train", index: int = 0,
                  record: dict | None = None) -> Sample:
    """One ShapesWorld sample with its full record (captions, VQA, conversations, GenEval metadata)."""
    from vqrae.data.shapes_text import (  # text is a layer above pixels
        captions_for,
        vqa_for,
        vqa_to_conversation,
    )

    rng = sample_rng(seed, split, index)
    tag, rec, background, image, labels, gt = sample_scene(rng, cfg, record=record)
    if not rec:  # a free scene still carries a GenEval record that it satisfies
        rec = _record_for_free_scene(gt)
    captions = captions_for(gt, background.kind, rec, tag, cfg.size)
    vqa = vqa_for(gt, cfg, rng)
    out = {
        "id": f"{split}-{index:06d}",
        "split": split,
        "index": index,
        "seed": int(seed),
        "width": cfg.size,
        "height": cfg.size,
        "tag": tag,
        "caption": captions[0],
        "captions": captions,
        "objects": gt,
        "background": asdict(background) | {"colors": [list(c) for c in background.colors]},
        "geneval": rec,
        "vqa": vqa,
        "conversations": vqa_to_conversation(vqa, rng.permutation(len(vqa)).tolist()),
    }
    return Sample(image, labels, out)


def _record_for_free_scene(gt: list[dict]) -> dict:
    """The most specific GenEval record a free scene satisfies (used as its metadata, not as its caption)."""
    counts: dict[str, int] = {}
    for o in gt:
        counts[o["class"]] = counts.get(o["class"], 0) + 1
    first = gt[0]
    if len(gt) == 1:
        return make_record("colors", [{"class": first["class"], "count": 1, "color": first["color"]}])
    if len(counts) == 1:
        return make_record("counting", [{"class": first["class"], "count": len(gt)}])
    a, b = next((a, b) for a in gt for b in gt if a["class"] != b["class"])
    if counts[a["class"]] == 1 and counts[b["class"]] == 1:
        rels = stable_relations(b["box"], a["box"])[0]
        if rels:
            return make_record("position", [{"class": a["class"], "count": 1},
                                            {"class": b["class"], "count": 1, "position": [min(rels), 0]}])
        return make_record("color_attr", [{"class": a["class"], "count": 1, "color": a["color"]},
                                          {"class": b["class"], "count": 1, "color": b["color"]}])
    return make_record("two_object", [{"class": a["class"], "count": 1}, {"class": b["class"], "count": 1}])


def config_dict(cfg: ShapesConfig) -> dict:
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
