"""The tokenizer's training stages on tiny ShapesWorld data: each runs, its loss falls, and its export loads back
the way the next stage (or the user) needs it. Plus `vqrae eval reconstruction` on the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vqrae.train import load_config, train
from vqrae.train.metrics import read_metrics
from vqrae.train.stages import get_stage

TINY_DATA = ["data=shapes", "data_num=64", "val_data=shapes", "val_num=16", "log_every=1"]


def run_stage(name: str, out: Path, *overrides: str):
    cls = get_stage(name)
    cfg = load_config(cls.config_class, None, [f"output_dir={out}", *TINY_DATA, *overrides])
    result = train(cls(cfg))
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    evals = [r for r in read_metrics(out / "metrics.jsonl") if any(k.startswith("eval/") for k in r)]
    return result, losses, evals


def falls(losses: list[float], k: int = 3) -> bool:
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage0")
    result, losses, evals = run_stage(
        "encoder-pretrain", out, "image_size=32", "patch_size=8", "width=32", "depth=1", "heads=2",
        "text_depth=1", "max_text_len=16", "vocab_size=120", "tokenizer_corpus=64", "batch_size=16",
        "max_steps=12", "lr=2e-3", "warmup_steps=2")
    assert falls(losses), losses
    assert {"eval/retrieval_top1", "eval/retrieval_chance"} <= set(evals[-1])
    return result.final_dir


def test_encoder_pretrain_exports_a_siglip_checkpoint(encoder_dir):
    from transformers import AutoTokenizer, SiglipModel

    model = SiglipModel.from_pretrained(encoder_dir)
    assert model.config.vision_config.image_size == 32
    tok = AutoTokenizer.from_pretrained(encoder_dir)  # the text tokenizer travels with the checkpoint
    ids = tok("a photo of a red circle").input_ids
    assert tok.unk_token_id not in ids and len(ids) > 3
    preprocessor = json.loads((encoder_dir / "preprocessor_config.json").read_text())
    assert preprocessor["image_mean"] == [0.5, 0.5, 0.5]


@pytest.fixture(scope="module")
def stage1_dir(encoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage1")
    result, losses, evals = run_stage(
        "tokenizer-stage1", out, f"encoder={encoder_dir}", "codebook_size=64", "codebook_dim=32",
        "batch_size=8", "max_steps=12", "lr=2e-3", "warmup_steps=1", "perceptual_weight=0.1")
    assert falls(losses), losses
    assert {"eval/psnr", "eval/ssim", "eval/utilization", "eval/perplexity"} <= set(evals[-1])
    return result.final_dir


def test_stage1_trains_only_the_tokenizer_side(stage1_dir, encoder_dir):
    from vqrae.tokenizer import VQRAE

    vq = VQRAE.from_pretrained(stage1_dir)
    fresh = VQRAE.from_encoder("siglip", str(encoder_dir), codebook_size=64, codebook_dim=32)
    # the encoder is the stage-0 encoder, untouched; the codebook buffer is still the frozen random one it was
    for (name, a), b in zip(vq.encoder.state_dict().items(), fresh.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert vq.config.freeze_encoder


def test_stage2_trains_the_encoder_near_its_teacher(stage1_dir, tmp_path):
    from vqrae.tokenizer import VQRAE

    result, losses, evals = run_stage(
        "tokenizer-stage2", tmp_path, f"tokenizer={stage1_dir}", "data_num=8", "batch_size=8", "max_steps=8",
        "lr=1e-3", "encoder_lr=1e-3", "warmup_steps=1", "perceptual_weight=0.1")  # one batch, seen 8 times
    assert falls(losses), losses
    last = evals[-1]
    assert 0.5 < last["eval/feature_cosine"] < 1.0  # moved, but held near the stage-1 encoder
    before, after = VQRAE.from_pretrained(stage1_dir), VQRAE.from_pretrained(result.final_dir)
    moved = [not torch.equal(a, b) for a, b in zip(before.encoder.parameters(), after.encoder.parameters())]
    assert any(moved)
    assert torch.equal(before.quantizer.codebook, after.quantizer.codebook)  # C stays frozen
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert records[0]["distill"] == 0 and records[-1]["distill"] > 0  # T starts as an exact copy, then they part


def test_patch_kmeans_stages_train_the_head_and_keep_the_codebook(encoder_dir, tmp_path):
    """`model.quantizer=patch-kmeans`: stage 1 seeds and updates the codebook and trains the pixel head (its loss
    falls); stage 2 loads it back, trains the encoder and keeps moving the codes with it."""
    from vqrae.tokenizer import VQRAE

    s1, losses, evals = run_stage(
        "tokenizer-stage1", tmp_path / "s1", f"encoder={encoder_dir}", "model.quantizer=patch-kmeans",
        "model.codebook_size=32", "model.quantizer_head_dim=32", "batch_size=8", "max_steps=12", "lr=2e-3",
        "warmup_steps=1", "perceptual_weight=0.1")
    assert falls(losses), losses
    head = [r["pixel_head"] for r in read_metrics(tmp_path / "s1" / "metrics.jsonl") if "pixel_head" in r]
    assert len(head) == 12 and falls(head), head
    vq1 = VQRAE.from_pretrained(s1.final_dir)
    assert vq1.config.quantizer == "patch-kmeans" and bool(vq1.quantizer.initialized)
    assert evals[-1]["eval/utilization"] > 1 / 32
    s2, losses, _ = run_stage(
        "tokenizer-stage2", tmp_path / "s2", f"tokenizer={s1.final_dir}", "data_num=8", "batch_size=8",
        "max_steps=6", "lr=1e-3", "encoder_lr=1e-3", "warmup_steps=1", "perceptual_weight=0.1",
        "model.ema_decay=0.5")
    assert falls(losses), losses
    vq2 = VQRAE.from_pretrained(s2.final_dir)
    assert not torch.equal(vq1.quantizer.centroids, vq2.quantizer.centroids)  # the EMA went on in stage 2
    assert any(not torch.equal(a, b) for a, b in zip(vq1.encoder.parameters(), vq2.encoder.parameters()))


def test_gan_switches_on_at_its_start_step(stage1_dir, tmp_path):
    _, _, _ = run_stage(
        "tokenizer-stage1", tmp_path, f"tokenizer={stage1_dir}", "batch_size=4", "max_steps=4", "lr=1e-3",
        "gan_weight=0.1", "gan_start_step=2", "disc_channels=8", "eval_every=100")
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["gan_weight"] > 0 for r in records] == [False, False, True, True]
    assert all(r["d_loss"] > 0 for r in records)


def test_stage_config_errors():
    cls = get_stage("tokenizer-stage1")
    with pytest.raises(ValueError, match="'tokenizer'.*'encoder'"):
        load_config(cls.config_class, None, [])
    with pytest.raises(ValueError, match="gan_weight"):
        load_config(cls.config_class, None, ["encoder=x", "gan_weight=-1"])


def test_eval_reconstruction_cli(stage1_dir, encoder_dir, tmp_path, capsys):
    from vqrae.cli.cli import main

    out = tmp_path / "eval"
    rc = main(["eval", "reconstruction", "--tokenizer", str(stage1_dir), "--data", "shapes", "--num", "12",
               "--reference-encoder", str(encoder_dir), "--batch-size", "5", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 12 and 0 < summary["ssim"] <= 1 and summary["psnr"] > 5
    assert 0 < summary["utilization"] <= 1 and summary["perplexity"] >= 1
    assert summary["feature_cosine"] == pytest.approx(1.0, abs=1e-5)  # same encoder as the reference
    assert "not computed" in summary["notes"]["rfid"] and "not computed" in summary["notes"]["lpips"]
    assert (out / "grid.png").is_file()
    assert "psnr" in capsys.readouterr().out
    rc = main(["eval", "reconstruction", "--tokenizer", str(tmp_path / "none"), "--data", "shapes"])
    assert rc == 2


def test_rfid_and_lpips_with_local_weights(stage1_dir, tmp_path, monkeypatch, vgg16_trunk_weights):
    """rFID and LPIPS run from local files (random weights stand in for the real ones, which cannot be fetched)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from vqrae.eval.reconstruction import reconstruction_metrics
    from vqrae.tokenizer import VQRAE
    from vqrae.train.stages.common import image_text_dataset

    # Build the network once with its weight loading stubbed out, to get a state dict of the right shapes.
    monkeypatch.setattr(torch, "load", lambda *a, **k: {})
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    monkeypatch.undo()
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    vq = VQRAE.from_pretrained(stage1_dir)
    data = image_text_dataset("shapes", 6, vq.image_size, "val", 0, kind="image")
    m = reconstruction_metrics(vq, data, batch_size=3, lpips_vgg_weights=str(vgg16_trunk_weights),
                               inception_weights=str(tmp_path / "inception.pth"), progress=False)
    assert m["rfid"] >= 0 and 0 <= m["lpips"] and "notes" not in m


def test_codebook_dim_ablation_command(encoder_dir, tmp_path, capsys):
    from vqrae.cli.cli import main

    cfg = Path(__file__).parents[1] / "configs" / "shapes-tiny" / "tokenizer-stage1.yaml"
    rc = main(["ablate", "codebook-dim", "--config", str(cfg), "--dims", "8,32", "--out", str(tmp_path),
               f"encoder={encoder_dir}", *TINY_DATA, "codebook_size=64", "batch_size=8", "max_steps=3",
               "eval_every=0", "save_every=0"])
    assert rc == 0
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [r["codebook_dim"] for r in rows] == [8, 32]
    assert all(0 < r["utilization"] <= 1 and r["psnr"] > 0 for r in rows)
    table = capsys.readouterr().out
    assert "utilization" in table and "PSNR" in table
    assert main(["ablate", "codebook-dim", "--config", str(cfg), "--dims", "8"]) == 2


def test_continuous_baseline_trains_without_the_quantizer(encoder_dir, tmp_path):
    """quantize=false: the decoder reads the encoder's features, the quantizer is neither used nor optimised."""
    cls = get_stage("tokenizer-stage1")
    cfg = load_config(cls.config_class, None, [f"output_dir={tmp_path}", f"encoder={encoder_dir}", *TINY_DATA,
                                                "codebook_size=64", "codebook_dim=32", "quantize=false"])
    stage = cls(cfg)
    module = stage.build_model()
    optimised = {id(p) for g in stage.param_groups(module) for p in g["params"]}
    assert not any(id(p) in optimised for p in module.vq.quantizer.parameters())
    assert any(id(p) in optimised for p in module.vq.decoder.parameters())
    pixels = torch.rand(4, 3, 32, 32)
    loss, metrics = module(pixels)
    assert torch.isfinite(loss) and "batch_utilization" not in metrics and float(metrics["quantizer"]) == 0
    loss.backward()
    assert all(p.grad is None for p in module.vq.quantizer.parameters())
    m = stage.evaluate(module, 0)
    assert m["psnr"] > 0 and "utilization" not in m  # no codes, no codebook usage


def test_quantizer_ablation_command(encoder_dir, tmp_path, capsys, monkeypatch):
    import vqrae.train
    import vqrae.train.engine as engine_module
    from vqrae.cli.cli import main

    initial = []  # each arm's weights as training starts

    class RecordingBackend(engine_module.PlainBackend):
        def __init__(self, module, *args, **kwargs):
            initial.append({k: v.clone() for k, v in module.state_dict().items()})
            super().__init__(module, *args, **kwargs)

    monkeypatch.setattr(engine_module, "PlainBackend", RecordingBackend)
    train = vqrae.train.train

    def train_then_draw(stage):  # a run leaves the global RNG anywhere (dropout, augmentation, ...)
        result = train(stage)
        torch.rand(11)
        return result

    monkeypatch.setattr(vqrae.train, "train", train_then_draw)
    cfg = Path(__file__).parents[1] / "configs" / "shapes-tiny" / "tokenizer-stage1.yaml"
    rc = main(["ablate", "quantizer", "--config", str(cfg), "--out", str(tmp_path), f"encoder={encoder_dir}",
               *TINY_DATA, "codebook_size=64", "codebook_dim=32", "batch_size=8", "max_steps=3", "eval_every=0",
               "save_every=0"])
    assert rc == 0
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [r["decoder input"] for r in rows] == ["codes", "continuous"]
    assert 0 < rows[0]["utilization"] <= 1 and rows[1]["utilization"] is None
    assert all(r["psnr"] > 0 for r in rows)
    assert "quantization costs" in capsys.readouterr().out
    # The arms differ only in quantize=: they start from the same weights (codebook included), so the PSNR gap is
    # the quantizer's, not the luck of two initialisations.
    codes, continuous = initial
    assert codes.keys() == continuous.keys() and "vq.quantizer.codebook" in codes
    assert all(torch.equal(codes[k], continuous[k]) for k in codes)
