"""VQRAE's explicit weight initialisation (VQRAE._init_weights): SimVQ's reference init, MAE's decoder init, the
pretrained encoder left alone, a codebook fixed by its own seed, and settings that survive save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from vqrae.tokenizer import VQRAE, SimVQ, VQRAEConfig
from vqrae.tokenizer.encoders import build_encoder
from vqrae.tokenizer.testing import tiny_vqrae_config


def built(encoder_type: str = "siglip", seed: int = 0, **overrides) -> VQRAE:
    torch.manual_seed(seed)
    return VQRAE(tiny_vqrae_config(encoder_type, **overrides))


def test_simvq_uses_the_reference_init():
    """C ~ N(0, 1/e); W and the projections at PyTorch's nn.Linear default: U(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in)."""
    vq = built(codebook_size=256, codebook_dim=64)  # through VQRAE: post_init must not overwrite it
    q = vq.quantizer
    e, d = 64, vq.feature_dim
    assert q.codebook.mean().abs() < 0.01 and q.codebook.std().item() == pytest.approx(e**-0.5, rel=0.03)
    for linear, fan_in in ((q.codebook_map, e), (q.proj_in, d), (q.proj_out, e)):
        w = linear.weight
        assert w.abs().max() <= fan_in**-0.5
        assert w.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.06), linear
        if linear.bias is not None:
            assert linear.bias.abs().max() <= fan_in**-0.5 and linear.bias.abs().max() > 0.3 * fan_in**-0.5


def test_decoder_uses_the_mae_init():
    vq = built(decoder_dim=64, decoder_depth=2, decoder_heads=2)
    linears = [m for m in vq.decoder.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in vq.decoder.modules() if isinstance(m, nn.LayerNorm)]
    assert len(linears) == 2 + 4 * 2 and len(norms) == 1 + 2 * 2  # embed, head; qkv, proj, fc1, fc2 per block
    for m in linears:
        xavier_std = math.sqrt(2 / (m.in_features + m.out_features))
        assert m.weight.std().item() == pytest.approx(xavier_std, rel=0.1), m
        assert torch.count_nonzero(m.bias) == 0
    for m in norms:
        assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0


@pytest.mark.parametrize("encoder_type", ["siglip", "timm"])
def test_encoder_keeps_its_own_init(encoder_type):
    """The encoder is the pretrained model's (or, built from a config, its library's own init): VQRAE's init does
    not touch it. A fresh encoder built with the same seed is the same, weight for weight."""
    vq = built(encoder_type, seed=3)
    cfg = vq.config
    torch.manual_seed(3)
    ref = build_encoder(cfg.encoder_type, cfg.encoder_config, cfg.image_mean, cfg.image_std)
    ours = vq.encoder.state_dict()
    assert ours.keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(ours[k], v), k


def test_codebook_comes_from_its_own_seed():
    a, b = built(seed=0), built(seed=1)  # different global RNG states
    assert torch.equal(a.quantizer.codebook, b.quantizer.codebook)
    assert not torch.equal(a.quantizer.codebook_map.weight, b.quantizer.codebook_map.weight)
    c = built(seed=0, codebook_seed=7)
    assert not torch.equal(a.quantizer.codebook, c.quantizer.codebook)
    assert torch.equal(SimVQ(dim=8, codebook_size=16, codebook_dim=8, codebook_seed=7).codebook,
                       SimVQ(dim=8, codebook_size=16, codebook_dim=8, codebook_seed=7).codebook)
    with pytest.raises(ValueError, match="codebook_seed"):
        VQRAEConfig(codebook_seed=-1)


def test_loading_does_not_reinitialise(tmp_path):
    vq = built(codebook_seed=5)
    with torch.no_grad():
        vq.quantizer.codebook.mul_(2)  # a codebook that the seed would not give: it must come from the file
    vq.save_pretrained(tmp_path)
    loaded = VQRAE.from_pretrained(tmp_path)
    for k, v in vq.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize("key", ["decoder_gradient_checkpointing", "gradient_checkpointing"])
def test_gradient_checkpointing_survives_save_and_load(tmp_path, key):
    """transformers' post_init deletes a config attribute named `gradient_checkpointing`; the setting is stored as
    `decoder_gradient_checkpointing`, and the old key still reads."""
    vq = built(**{key: True})
    assert vq.config.decoder_gradient_checkpointing and vq.decoder.gradient_checkpointing
    vq.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["decoder_gradient_checkpointing"] is True
    loaded = VQRAE.from_pretrained(tmp_path)
    assert loaded.config.decoder_gradient_checkpointing and loaded.decoder.gradient_checkpointing
    # a folder written before the rename
    data = json.loads((tmp_path / "config.json").read_text())
    data["gradient_checkpointing"] = data.pop("decoder_gradient_checkpointing")
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert VQRAE.from_pretrained(tmp_path).decoder.gradient_checkpointing
    pixels = torch.rand(2, 3, 32, 32)  # and it still trains
    loaded.train()
    out = loaded(pixels)
    (out.reconstruction - pixels).pow(2).mean().backward()
    assert loaded.decoder.head.weight.grad is not None
