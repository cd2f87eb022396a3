"""eval.shape_probe: the colour of an object is read from the pixels' own mean colour; noise reads nothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vqrae.eval.shape_probe import shape_probe


def _patch_colours(px: torch.Tensor) -> torch.Tensor:  # a perfect local "encoder": each 4x4 patch's mean colour
    return F.avg_pool2d(px, 4).flatten(2).transpose(1, 2)


def test_probe_reads_colour_from_a_local_encoder_and_not_from_noise():
    local = shape_probe(_patch_colours, train_images=120, val_images=40, size=32, what="colour", ridge=1e-3)
    assert local["centre"] > 0.9 and local["objects_val"] > 30
    g = torch.Generator().manual_seed(0)
    noise = shape_probe(lambda px: torch.randn(len(px), 64, 3, generator=g), train_images=120, val_images=40,
                        size=32, what="colour", ridge=1e-3)
    assert noise["centre"] < local["centre"] - 0.4
