"""Perceptual and GAN losses of the tokenizer stages."""

from __future__ import annotations

import pytest
import torch

from vqrae.tokenizer import VQRAE
from vqrae.tokenizer.losses import PatchDiscriminator, PerceptualLoss, adaptive_gan_weight, gan_losses
from vqrae.tokenizer.testing import tiny_vqrae_config


def test_lpips_loads_backbone_from_disk(vgg16_trunk_weights):
    loss = PerceptualLoss(lpips_vgg_weights=str(vgg16_trunk_weights))
    assert loss.kind == "lpips"
    # the trunk holds exactly the file's weights
    saved = torch.load(vgg16_trunk_weights, weights_only=True)
    assert torch.equal(getattr(loss.lpips.net.slice3, "10").weight, saved["features.10.weight"])
    x = torch.rand(2, 3, 32, 32)
    assert loss(x, x).item() == pytest.approx(0, abs=1e-6)
    y = torch.rand(2, 3, 32, 32, requires_grad=True)
    value = loss(y, x)
    value.backward()
    assert value.item() > 0 and y.grad.abs().sum() > 0


def test_lpips_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        PerceptualLoss(lpips_vgg_weights=str(tmp_path / "nope.pth"))
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision vgg16"):
        PerceptualLoss(lpips_vgg_weights=str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="needs lpips_vgg_weights or"):
        PerceptualLoss()


def test_feature_perceptual_loss_uses_frozen_encoder():
    torch.manual_seed(0)
    vq = VQRAE(tiny_vqrae_config())
    loss = PerceptualLoss(feature_net=vq.encoder)
    assert loss.kind == "features" and "feature_net" not in dict(loss.named_children())
    x = torch.rand(2, 3, 32, 32)
    assert loss(x, x).item() == pytest.approx(0, abs=1e-6)
    y = torch.rand(2, 3, 32, 32, requires_grad=True)
    value = loss(y, x)
    value.backward()
    assert value.item() > 0 and y.grad.abs().sum() > 0  # gradient reaches the images
    assert all(p.grad is None for p in vq.encoder.parameters())  # the frozen encoder does not learn


def test_gan_losses_do_not_leak_between_players():
    torch.manual_seed(0)
    disc = PatchDiscriminator(channels=8, num_layers=2)
    gen_param = torch.nn.Parameter(torch.rand(2, 3, 32, 32))
    real = torch.rand(2, 3, 32, 32)
    d_loss, g_loss = gan_losses(disc, real, gen_param)
    g_loss.backward(retain_graph=True)
    assert all(p.grad is None for p in disc.parameters())  # generator loss: no discriminator gradient
    assert gen_param.grad.abs().sum() > 0
    gen_param.grad = None
    d_loss.backward()
    assert gen_param.grad is None  # discriminator loss: no generator gradient
    assert all(p.grad is not None for p in disc.parameters())


def test_adaptive_weight_balances_gradients():
    w = torch.nn.Parameter(torch.ones(4))
    nll = (w * 2).sum()  # grad norm 4
    g = (w * 0.5).sum()  # grad norm 1
    assert adaptive_gan_weight(nll, g, w).item() == pytest.approx(4.0, rel=1e-3)
