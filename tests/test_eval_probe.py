"""The patch-colour probe: a linear read-out error that tells information kept from information lost."""

import torch

from vqrae.eval.probe import PatchColourProbe


def _batch(seed: int, b: int = 16, grid: int = 4, patch: int = 4, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(b, 3, grid, grid, generator=g)
    pixels = colours.repeat_interleave(patch, 2).repeat_interleave(patch, 3)  # flat patches of those colours
    tokens = colours.flatten(2).transpose(1, 2)  # (b, grid*grid, 3)
    mix = torch.randn(3, d, generator=torch.Generator().manual_seed(0))  # the same linear map in every batch
    return pixels, tokens @ mix


def test_probe_separates_kept_from_lost_colour():
    probe = PatchColourProbe(max_tokens=4096)
    for seed in range(8):
        pixels, features = _batch(seed)
        lost = torch.randn(features.shape, generator=torch.Generator().manual_seed(100 + seed))  # no colour at all
        probe.update(pixels, features, lost)
    result = probe.result()
    assert result["colour_probe_features"] < 0.5  # an exact linear code of the colour: read back to < 0.5 levels
    assert result["colour_probe_codes"] > 60  # noise: about the std of uniform 8-bit colours (~74 levels)


def test_probe_caps_tokens_and_refuses_too_few():
    probe = PatchColourProbe(max_tokens=100)
    for seed in range(20):
        pixels, features = _batch(seed)
        probe.update(pixels, features, features)
    assert probe.count == 100
    few = PatchColourProbe()
    pixels, features = _batch(0, b=2)
    few.update(pixels, features, features)
    assert few.result() == {}  # 32 tokens cannot fit 9 weights per colour honestly
