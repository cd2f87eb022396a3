"""The COCO GenEval plug-ins from local transformers checkpoints: an object detector and a CLIP colour classifier.

The official scorer uses mmdet's Mask2Former Swin-S (COCO instance segmentation) and open_clip ViT-L/14 (OpenAI
weights). The transformers equivalents, downloaded on a connected machine and copied here:

    hf download facebook/mask2former-swin-small-coco-instance --local-dir ~/.cache/vqrae/geneval/mask2former
    hf download openai/clip-vit-large-patch14 --local-dir ~/.cache/vqrae/geneval/clip

`TransformersDetector(path)` loads a Mask2Former/MaskFormer (instance masks) or any `AutoModelForObjectDetection`
checkpoint (DETR, Deformable DETR, RT-DETR, ...: boxes only, so colour falls back to the box crop).
`ClipColorClassifier(path)` scores the masked crop against GenEval's three colour prompts per colour
("a photo of a {c} {class}", "a photo of a {c}-colored {class}", "a photo of a {c} object"), each colour's text
embedding being the normalised mean of its prompts' normalised embeddings (clip_benchmark's zero-shot classifier).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqrae.data.geneval import GENEVAL_COLORS

from .detection import Detection, masked_crop

logger = logging.getLogger(__name__)

WEIGHTS_HOME = Path(os.environ.get("VQRAE_GENEVAL_WEIGHTS", "~/.cache/vqrae/geneval")).expanduser()
DETECTOR_ID, CLIP_ID = "facebook/mask2former-swin-small-coco-instance", "openai/clip-vit-large-patch14"
COLOR_TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
# Checkpoint label names that differ from GenEval's object_names.txt (COCO names in other spellings).
LABEL_ALIASES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
                 "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "tvmonitor": "tv",
                 "diningtable": "dining table", "pottedplant": "potted plant", "hair dryer": "hair drier"}
_SEGMENTATION_TYPES = {"mask2former", "maskformer", "oneformer"}


def resolve_coco_weights(detector: str | None = None, clip: str | None = None) -> tuple[Path, Path]:
    """The local detector and CLIP folders (default under $VQRAE_GENEVAL_WEIGHTS or ~/.cache/vqrae/geneval);
    FileNotFoundError with one line saying exactly what is needed where, if either is missing."""
    det = Path(detector).expanduser() if detector else WEIGHTS_HOME / "mask2former"
    clp = Path(clip).expanduser() if clip else WEIGHTS_HOME / "clip"
    missing = [f"{what} ({hub}) in {path}" for what, hub, path in
               (("a Mask2Former COCO instance checkpoint", DETECTOR_ID, det), ("CLIP ViT-L/14", CLIP_ID, clp))
               if not (path / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(
            "the COCO GenEval suite needs local weights: " + " and ".join(missing) + "; download with "
            "`hf download ID --local-dir DIR` on a connected machine, or pass --detector-weights/--clip-weights "
            "(or use --detector shapes for ShapesWorld prompts)")
    return det, clp


def _device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


class TransformersDetector:
    """`detector(image) -> list[Detection]` from a local transformers checkpoint (every query above `min_score`;
    the scorer applies GenEval's 0.3 / 0.9 thresholds)."""

    def __init__(self, path: str | Path, device: str | None = None, min_score: float = 0.05):
        from transformers import AutoConfig, AutoImageProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no detector checkpoint (config.json) in {path}")
        config = AutoConfig.from_pretrained(path)
        self.segmentation = config.model_type in _SEGMENTATION_TYPES
        if self.segmentation:
            from transformers import AutoModelForUniversalSegmentation as auto
        else:
            from transformers import AutoModelForObjectDetection as auto
        self.device = _device(device)
        self.model = auto.from_pretrained(path).to(self.device).eval()
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.min_score = min_score
        self.names = {int(k): LABEL_ALIASES.get(v, v) for k, v in self.model.config.id2label.items()}

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> list[Detection]:
        image = image.convert("RGB")
        size = [(image.height, image.width)]
        inputs = self.processor(images=image, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        if not self.segmentation:
            res = self.processor.post_process_object_detection(outputs, threshold=self.min_score, target_sizes=size)[0]
            return [Detection(self.names.get(int(lab), str(int(lab))), float(s), b.tolist())
                    for s, lab, b in zip(res["scores"].cpu(), res["labels"].cpu(), res["boxes"].cpu())]
        res = self.processor.post_process_instance_segmentation(outputs, threshold=self.min_score, target_sizes=size,
                                                                return_binary_maps=True)[0]
        masks = res["segmentation"]
        out = []
        for k, info in enumerate(res["segments_info"]):
            mask = masks[k].cpu().numpy().astype(bool) if masks is not None and masks.dim() == 3 else None
            if mask is None or not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            box = (float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1)
            out.append(Detection(self.names.get(int(info["label_id"]), str(info["label_id"])), float(info["score"]),
                                 box, mask))
        return out


class ClipColorClassifier:
    """`classifier(image, detection) -> colour`: CLIP zero-shot over the ten GenEval colours on the masked crop."""

    def __init__(self, path: str | Path, device: str | None = None):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no CLIP checkpoint (config.json) in {path}")
        self.device = _device(device)
        self.model = CLIPModel.from_pretrained(path).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.image_processor = AutoImageProcessor.from_pretrained(path)
        self._text: dict[str, torch.Tensor] = {}

    @staticmethod
    def _features(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns a model output

    @torch.no_grad()
    def color_embeddings(self, classname: str) -> torch.Tensor:
        """(10, D): per colour, the normalised mean of its three prompts' normalised text embeddings."""
        if classname not in self._text:
            texts = [t.format(c=c, cls=classname) for c in GENEVAL_COLORS for t in COLOR_TEMPLATES]
            tok = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
            emb = self._features(self.model.get_text_features(**tok)).float()
            emb = torch.nn.functional.normalize(emb, dim=-1).view(len(GENEVAL_COLORS), len(COLOR_TEMPLATES), -1)
            self._text[classname] = torch.nn.functional.normalize(emb.mean(1), dim=-1)
        return self._text[classname]

    @torch.no_grad()
    def __call__(self, image: Image.Image, detection: Detection) -> str:
        crop = masked_crop(image, detection)
        pixels = self.image_processor(images=crop, return_tensors="pt")["pixel_values"].to(self.device)
        feats = self._features(self.model.get_image_features(pixel_values=pixels)).float()
        logits = torch.nn.functional.normalize(feats, dim=-1) @ self.color_embeddings(detection.label).T
        return GENEVAL_COLORS[int(logits.argmax(-1)[0])]


def load_coco_plugins(detector: str | None = None, clip: str | None = None, device: str | None = None):
    """(detector, colour classifier) for the official COCO prompts, from local weights (see resolve_coco_weights)."""
    det, clp = resolve_coco_weights(detector, clip)
    return TransformersDetector(det, device), ClipColorClassifier(clp, device)
