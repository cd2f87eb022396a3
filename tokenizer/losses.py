"""Reconstruction losses of the tokenizer stages: perceptual (LPIPS or a frozen feature network) and a patch GAN.

Perceptual loss is never a silent no-op: LPIPS (VGG) is used when its backbone weights lie on disk (hub downloads
fail on our machines; the small LPIPS linear heads ship inside the `lpips` package), otherwise the distance between
the features a frozen network (by default the tokenizer's own frozen encoder) gives the two images.

The GAN runs inside one optimiser step: the discriminator loss sees the reconstruction detached, and the generator
loss goes through the discriminator with its parameters detached (`torch.func.functional_call`), so one backward
pass trains both without either loss leaking into the other's parameters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def build_lpips(vgg_weights: str) -> nn.Module:
    """LPIPS-VGG with its backbone read from a torchvision vgg16 state dict (.pth or .safetensors) on disk."""
    import lpips

    if not os.path.isfile(vgg_weights):
        raise FileNotFoundError(f"LPIPS backbone weights not found: {vgg_weights}")
    if vgg_weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(vgg_weights)
    else:
        state = torch.load(vgg_weights, map_location="cpu", weights_only=True)
    model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)  # random trunk: no download; heads ship in lpips
    trunk = model.net
    mapped = {}
    for name in trunk.state_dict():  # "slice3.10.weight" holds torchvision's "features.10.weight"
        _, index, kind = name.split(".")
        key = f"features.{index}.{kind}"
        if key not in state:
            raise ValueError(f"{vgg_weights} is not a torchvision vgg16 state dict (no {key})")
        mapped[name] = state[key]
    trunk.load_state_dict(mapped)
    return model.eval().requires_grad_(False)


class PerceptualLoss(nn.Module):
    """LPIPS when `lpips_vgg_weights` is given, else a feature distance under `feature_net` (frozen)."""

    def __init__(self, lpips_vgg_weights: str | None = None,
                 feature_net: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        if lpips_vgg_weights:
            self.lpips = build_lpips(lpips_vgg_weights)
            self.kind = "lpips"
        elif feature_net is not None:
            self.lpips = None
            # Not registered as a submodule: it belongs to (and is trained/saved with) its owner, and must not show
            # up twice among the stage's parameters.
            object.__setattr__(self, "feature_net", feature_net)
            self.kind = "features"
        else:
            raise ValueError("perceptual loss needs lpips_vgg_weights or a frozen feature network")
        logger.info("perceptual loss: %s", self.kind)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> scalar loss (reconstruction gets the gradient)."""
        if self.lpips is not None:
            return self.lpips(reconstruction, target, normalize=True).mean()
        with torch.no_grad():
            ref = self.feature_net(target)
        # Per-token layer norm: compares feature directions and patterns, not the network's arbitrary scale.
        ref = F.layer_norm(ref, ref.shape[-1:])
        out = F.layer_norm(self.feature_net(reconstruction), ref.shape[-1:])
        return F.mse_loss(out, ref)


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al.): strided 4x4 convolutions to a map of real/fake logits, one per image patch."""

    def __init__(self, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, num_layers):
            nxt = channels * min(2**i, 8)
            layers += [nn.Conv2d(width, nxt, 4, 2, 1), nn.GroupNorm(min(32, nxt // 4), nxt), nn.LeakyReLU(0.2)]
            width = nxt
        layers += [nn.Conv2d(width, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)


def gan_losses(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge losses (discriminator, generator) for one joint backward pass (see the module docstring)."""
    d_loss = 0.5 * (F.relu(1 - disc(real.detach())).mean() + F.relu(1 + disc(fake.detach())).mean())
    frozen = {name: p.detach() for name, p in disc.named_parameters()}
    g_loss = -torch.func.functional_call(disc, frozen, (fake,)).mean()
    return d_loss, g_loss


def adaptive_gan_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4) -> torch.Tensor:
    """Taming-transformers' balance: ||grad nll|| / ||grad g_loss|| at the decoder's last layer (no gradient)."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, max_weight).detach()
