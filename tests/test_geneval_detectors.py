"""GenEval plug-ins: the ShapesWorld detector against rendered ground truth, and the transformers adapters' loading
paths with tiny random models built from configs (they must run and return Detections, not be accurate)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from vqrae.data.geneval import GENEVAL_COLORS
from vqrae.data.shapes import ShapesConfig, render_sample
from vqrae.eval.geneval.detection import Detection
from vqrae.eval.geneval.scoring import judge
from vqrae.eval.geneval.shapes_detector import PaletteColorClassifier, ShapesDetector, label_components


def clauses(record: dict) -> list[dict]:
    """Each clause of a record as a record of its own (a position clause keeps its target clause)."""
    out = []
    for c in record["include"]:
        if "position" in c:
            target = {k: v for k, v in record["include"][c["position"][1]].items() if k != "position"}
            out.append({"tag": record["tag"], "include": [target, dict(c, position=[c["position"][0], 0])]})
        else:
            out.append({"tag": record["tag"], "include": [{k: v for k, v in c.items() if k != "position"}]})
    out += [{"tag": record["tag"], "include": [], "exclude": [e]} for e in record.get("exclude", [])]
    return out


def jpeg(im: Image.Image, quality: int = 85) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def noise(im: Image.Image, std: float = 6.0) -> Image.Image:
    a = np.asarray(im, np.float32) + np.random.default_rng(0).normal(0, std, (im.height, im.width, 3))
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


CORRUPTIONS = {"clean": lambda im: im, "noise std 6": noise,
               "blur 0.6 px": lambda im: im.filter(ImageFilter.GaussianBlur(0.6)), "jpeg q85": jpeg}


def test_shapes_detector_on_rendered_scenes(capsys):
    detector, colors = ShapesDetector(), PaletteColorClassifier()
    rates = {}
    for size, n in ((64, 90), (32, 30)):
        for name, corrupt in CORRUPTIONS.items():
            right = total = images = 0
            for i in range(n):
                s = render_sample(ShapesConfig(size=size), 11, "val", i)
                image = corrupt(Image.fromarray(s.image))
                dets = detector(image)
                if name == "clean":  # every object found once, with its class, colour and box
                    assert sorted((d.label, d.color) for d in dets) == sorted(
                        (o["class"], o["color"]) for o in s.record["objects"]), s.record["caption"]
                    for d in dets:
                        assert d.mask is not None and d.mask.shape == (size, size) and d.score > 0.9
                for c in clauses(s.record["geneval"]):
                    total += 1
                    right += judge(c, dets, lambda d, im=image: colors(im, d)).correct
                images += judge(s.record["geneval"], dets, lambda d, im=image: colors(im, d)).correct
            rates[(size, name)] = (right / total, images / n)
    with capsys.disabled():
        print("\nShapesWorld detector, clauses right / images right:")
        for (size, name), (c, im) in rates.items():
            print(f"  {size:>3} px {name:<12} {c:.3f} / {im:.3f}")
    assert rates[(64, "clean")][0] >= 0.99 and rates[(32, "clean")][0] >= 0.99
    assert rates[(64, "noise std 6")][0] >= 0.95 and rates[(64, "blur 0.6 px")][0] >= 0.95
    assert rates[(64, "jpeg q85")][0] >= 0.9


def test_shapes_detector_edge_cases():
    detector = ShapesDetector()
    assert detector(Image.new("RGB", (48, 48), (120, 120, 120))) == []  # an empty scene
    rng = np.random.default_rng(0)
    dets = detector(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)))  # a random image
    assert all(isinstance(d, Detection) and 0 <= d.score <= 1 for d in dets)
    fg = np.zeros((6, 6), bool)
    fg[0, 0] = fg[1, 1] = fg[4, 4] = fg[4, 5] = True
    labels, n = label_components(fg)
    assert n == 2 and labels[0, 0] == labels[1, 1] != labels[4, 4] == labels[4, 5]  # 8-connected
    with pytest.raises(ValueError, match="unknown shapes"):
        ShapesDetector(classes=("hexagon",))


LABELS = {0: "cat", 1: "mouse", 2: "dog"}  # "mouse" is GenEval's "computer mouse"


def tiny_detr(path):
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], out_features=["stage2"])
    cfg = DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=16,
                     encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=8, id2label=LABELS,
                     label2id={v: k for k, v in LABELS.items()})
    DetrForObjectDetection(cfg).save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)


def tiny_mask2former(path):
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=swin, use_pretrained_backbone=False, hidden_dim=32, mask_feature_size=32,
                            feature_size=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                            dim_feedforward=32, encoder_feedforward_dim=32, num_queries=8, id2label=LABELS,
                            label2id={v: k for k, v in LABELS.items()})
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(path)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)


def tiny_clip(path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from vqrae.unified_model.testing import tiny_text_tokenizer

    tok = tiny_text_tokenizer()
    tok.pad_token = tok.eos_token
    cfg = CLIPConfig(text_config={"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 32,
                                  "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64,
                                  "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
                     vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=8)
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)


def test_transformers_adapters_load_local_weights(tmp_path):
    from vqrae.eval.geneval.hf_adapters import ClipColorClassifier, TransformersDetector, load_coco_plugins

    tiny_detr(tmp_path / "detr")
    tiny_mask2former(tmp_path / "m2f")
    tiny_clip(tmp_path / "clip")
    image = Image.fromarray(render_sample(ShapesConfig(size=48), 0, "val", 0).image)
    boxes = TransformersDetector(tmp_path / "detr", "cpu", min_score=0.0)(image)
    assert boxes and all(isinstance(d, Detection) and d.mask is None for d in boxes)
    assert {d.label for d in boxes} <= {"cat", "computer mouse", "dog"}
    detector, colors = load_coco_plugins(str(tmp_path / "m2f"), str(tmp_path / "clip"), "cpu")
    masks = detector(image)
    assert all(isinstance(d, Detection) and d.mask.shape == (48, 48) and d.mask.any() for d in masks)
    assert {d.label for d in masks} <= {"cat", "computer mouse", "dog"}
    probe = masks[0] if masks else Detection("cat", 0.9, (0, 0, 20, 20), np.ones((48, 48), bool))
    assert colors(image, probe) in GENEVAL_COLORS
    assert isinstance(colors, ClipColorClassifier) and colors.color_embeddings("cat").shape == (10, 8)
    record = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "p"}
    assert isinstance(judge(record, masks, lambda d: colors(image, d)).correct, bool)


def test_coco_suite_names_missing_weights(tmp_path):
    from vqrae.eval.geneval.hf_adapters import resolve_coco_weights

    with pytest.raises(FileNotFoundError) as err:
        resolve_coco_weights(str(tmp_path / "nope"), str(tmp_path / "nada"))
    msg = str(err.value)
    assert "\n" not in msg and "facebook/mask2former-swin-small-coco-instance" in msg
    assert "openai/clip-vit-large-patch14" in msg and str(tmp_path / "nope") in msg and str(tmp_path / "nada") in msg
