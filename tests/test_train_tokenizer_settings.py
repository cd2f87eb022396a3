"""The tokenizer stages' settings: the `model:` section reaches VQRAEConfig (older flat keys still work), keys that
`tokenizer=` makes meaningless are refused, and the logged PSNR is the evaluation's."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from vqrae.eval.metrics import mean_psnr, psnr
from vqrae.tokenizer import VQRAE
from vqrae.tokenizer.testing import save_tiny_siglip, tiny_vqrae_config
from vqrae.train.config import load_config, save_config
from vqrae.train.stages import get_stage
from vqrae.train.stages.tokenizer import ModelSettings, TokenizerStageConfig, TokenizerTrainer


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder")
    save_tiny_siglip(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    torch.manual_seed(0)
    VQRAE(tiny_vqrae_config()).save_pretrained(folder)
    return folder


def test_model_section_and_flat_keys_reach_the_tokenizer(encoder_dir, tmp_path):
    path = tmp_path / "stage1.yaml"
    path.write_text(f"encoder: {encoder_dir}\ncodebook_size: 64\nseed: 5\n"
                    "model:\n  codebook_dim: 40\n  decoder_mlp_ratio: 2.0\n  decoder_gradient_checkpointing: true\n")
    cls = get_stage("tokenizer-stage1")
    cfg = load_config(cls.config_class, path, ["model.commitment_weight=0.5", "model.lookup_memory_mb=8",
                                               "decoder_depth=1", "model.l2_normalize=true"])
    assert cfg.model == ModelSettings(codebook_size=64, codebook_dim=40, commitment_weight=0.5, l2_normalize=True,
                                      lookup_memory_mb=8, decoder_depth=1, decoder_mlp_ratio=2.0,
                                      decoder_gradient_checkpointing=True)
    assert cfg.codebook_size is None and cfg.decoder_depth is None  # folded into `model`
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(cls.config_class, tmp_path / "saved.yaml") == cfg

    vq = cls(cfg).build_model().vq
    c = vq.config
    assert (c.codebook_size, c.codebook_dim, c.commitment_weight, c.lookup_memory_mb, c.l2_normalize) == \
           (64, 40, 0.5, 8, True)
    assert c.decoder_depth == 1 and len(vq.decoder.blocks) == 1
    assert vq.decoder.blocks[0].mlp.fc1.out_features == 2 * vq.feature_dim
    assert vq.decoder.gradient_checkpointing and c.decoder_gradient_checkpointing
    assert vq.quantizer.commitment_weight == 0.5 and vq.quantizer.lookup_memory_mb == 8
    assert c.codebook_seed == 5  # the codebook follows the run's seed unless model.codebook_seed says otherwise
    assert load_config(cls.config_class, path, ["model.codebook_seed=9"]).vqrae_kwargs()["codebook_seed"] == 9

    # either spelling overrides the other, the later one winning (the command line beats the file)
    assert load_config(cls.config_class, path, ["model.codebook_size=32"]).model.codebook_size == 32
    assert load_config(cls.config_class, path, ["model.codebook_size=32", "codebook_size=16"]).model.codebook_size == 16
    assert load_config(cls.config_class, path, ["model.decoder_depth=3"]).model.decoder_depth == 3
    with pytest.raises(ValueError, match=r"config keys 'codebook_size' \(64\) and 'model.codebook_size' \(32\) "
                                         r"disagree: set one"):  # from Python, both at once
        TokenizerStageConfig(encoder="x", codebook_size=64, model=ModelSettings(codebook_size=32))
    assert TokenizerStageConfig(encoder="x", codebook_size=64).model.codebook_size == 64
    with pytest.raises(ValueError, match=r"unknown config key 'model.codebook_sise'.*did you mean 'model.codebook_size'"):
        load_config(cls.config_class, path, ["model.codebook_sise=32"])


@pytest.mark.parametrize("override, key", [
    ("codebook_size=64", "model.codebook_size' (or 'codebook_size'"),
    ("model.codebook_size=64", "model.codebook_size' (or 'codebook_size'"),
    ("model.decoder_depth=2", "model.decoder_depth' (or 'decoder_depth'"),
    ("decoder_dim=64", "model.decoder_dim' (or 'decoder_dim'"),
    ("model.decoder_mlp_ratio=2", "model.decoder_mlp_ratio'"), ("l2_normalize=true", "model.l2_normalize' (or"),
    ("model.codebook_seed=3", "model.codebook_seed'"), ("encoder=/some/encoder", "encoder'"),
    ("encoder_type=timm", "encoder_type'"), ("image_size=64", "image_size'"),
])
def test_tokenizer_folder_refuses_architecture_keys(tokenizer_dir, override, key):
    cls = get_stage("tokenizer-stage2")
    with pytest.raises(ValueError, match=rf"config key '{re.escape(key)}.* has no effect with 'tokenizer'") as info:
        load_config(cls.config_class, None, [f"tokenizer={tokenizer_dir}", override])
    assert "\n" not in str(info.value)


def test_tokenizer_folder_takes_training_settings(tokenizer_dir):
    """Defaults written out (old saved configs do) are fine; settings of how it trains apply to the loaded one."""
    cls = get_stage("tokenizer-stage2")
    cfg = load_config(cls.config_class, None, [
        f"tokenizer={tokenizer_dir}", "codebook_size=16384", "codebook_dim=1536", "l2_normalize=false",
        "encoder_type=siglip", "model.commitment_weight=0.5", "model.decoder_gradient_checkpointing=true"])
    vq = cls(cfg).build_model().vq
    saved = VQRAE.from_pretrained(tokenizer_dir)
    assert vq.config.codebook_size == saved.config.codebook_size == 64
    assert vq.quantizer.commitment_weight == vq.config.commitment_weight == 0.5
    assert vq.decoder.gradient_checkpointing and vq.config.decoder_gradient_checkpointing
    for k, v in saved.state_dict().items():
        assert torch.equal(vq.state_dict()[k], v), k


def test_logged_psnr_is_the_evaluation_psnr():
    torch.manual_seed(0)
    vq = VQRAE(tiny_vqrae_config())
    trainer = TokenizerTrainer(vq, TokenizerStageConfig(encoder="unused", perceptual_weight=0.0))
    pixels = torch.cat([torch.full((1, 3, 32, 32), 0.5), torch.rand(3, 3, 32, 32)])  # one easy image, three hard
    _, metrics = trainer(pixels)
    with torch.no_grad():
        recon = vq(pixels).reconstruction
    expected = psnr(pixels, recon).mean().item()  # vqrae.eval: uint8 images, per image, then the mean
    assert metrics["psnr"].item() == pytest.approx(expected, abs=1e-9)
    batch_mse = -10 * math.log10(F.mse_loss(recon.clamp(0, 1), pixels).item())
    assert abs(metrics["psnr"].item() - batch_mse) > 0.1  # the old definition (the batch's MSE) differs

    # an image reproduced exactly (infinite PSNR) carries no mean, as in `vqrae eval reconstruction`
    exact = torch.cat([recon[:1].clamp(0, 1), recon[1:]])
    assert mean_psnr(recon.clamp(0, 1), exact).item() == pytest.approx(
        psnr(recon[1:].clamp(0, 1), exact[1:]).mean().item())
    assert mean_psnr(pixels, pixels).item() == math.inf


def test_stage_evaluation_measures_fidelity_only_when_asked(encoder_dir, tmp_path):
    """`eval_fidelity`: the ShapesWorld object figures join the periodic evaluation on request (they cost time)."""
    cls = get_stage("tokenizer-stage1")
    base = [f"encoder={encoder_dir}", "codebook_size=64", "codebook_dim=40", "val_data=shapes", "val_num=8",
            "batch_size=8", f"output_dir={tmp_path}"]
    measured = {}
    for flag in (False, True):
        cfg = load_config(cls.config_class, None, [*base, f"eval_fidelity={str(flag).lower()}"])
        assert cfg.eval_fidelity is flag
        stage = cls(cfg)
        torch.manual_seed(0)
        measured[flag] = stage.evaluate(stage.build_model(), 0)
    assert "shape_accuracy" not in measured[False] and "psnr" in measured[False]
    assert 0 <= measured[True]["shape_accuracy"] <= 1 and measured[True]["shape_accuracy_originals"] > 0.5
