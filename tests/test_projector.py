"""The projector: feature_merge (an <image> position reads an s x s block of the VQRAE feature grid, InternVL /
Qwen2-VL merging) and calibration (a fresh projector folds in the features' statistics)."""

from __future__ import annotations

import pytest
import torch

from vqrae.unified_model import UnifiedCollator, UnifiedConfig, UnifiedModel
from vqrae.unified_model.projector import build_projector, calibrate_projector, merge_features
from vqrae.unified_model.testing import tiny_unified_model


@pytest.fixture(scope="module")
def merged():
    return tiny_unified_model(seed=0, feature_merge=2)  # 32 px, patch 8: a 4x4 grid read in 2x2 = 4 positions


def _record(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"messages": [{"role": "user", "content": "<image>\nwhat colour is the square?"},
                         {"role": "assistant", "content": "blue"}], "images": [torch.rand(3, 32, 32, generator=g)]}


def test_merge_puts_each_block_side_by_side():
    grid = torch.arange(16.0).reshape(1, 16, 1)  # one image, a 4x4 grid of scalars 0..15 in raster order
    out = merge_features(grid, (4, 4), 2)
    assert out.shape == (1, 4, 4)
    assert out[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert merge_features(grid, (4, 4), 1) is grid
    with pytest.raises(ValueError, match="grid"):
        merge_features(grid[:, :15], (4, 4), 2)


def test_merged_model_reads_an_image_in_a_quarter_of_the_positions(merged, tmp_path):
    plain = tiny_unified_model(seed=0)
    assert plain.config.num_image_features == 16 and merged.config.num_image_features == 4
    assert merged.projector[0].in_features == 4 * merged.config.feature_dim
    batch = UnifiedCollator(merged.processor)([_record()])
    assert int((batch["input_ids"] == merged.config.image_token_id).sum()) == 4
    # the cached-features path (the VQRAE's own 16 vectors) and the pixel path fill the slots alike
    with torch.no_grad():
        feats = merged.vqrae.encode(batch["pixel_values"])
        a = merged.embed(batch["input_ids"], pixel_values=batch["pixel_values"])
        b = merged.embed(batch["input_ids"], vqrae_features=feats)
    assert feats.shape[1] == 16 and torch.allclose(a, b)
    cached = UnifiedCollator(merged.processor)([{"conversations": [
        {"from": "human", "value": "<image>\nwhat colour is the square?"}, {"from": "gpt", "value": "blue"}],
        "vqrae_features": feats[0]}])
    assert torch.equal(cached["input_ids"], batch["input_ids"])
    # it trains: the projector gets a gradient through the merged slots
    merged.train()
    out = merged(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and merged.projector[0].weight.grad.abs().sum() > 0
    merged.zero_grad(set_to_none=True)
    merged.eval()
    # and round-trips through save_pretrained with identical logits
    merged.save_pretrained(tmp_path / "m")
    loaded = UnifiedModel.from_pretrained(tmp_path / "m")
    assert loaded.config.feature_merge == 2 and loaded.config.num_image_features == 4
    with torch.no_grad():
        assert torch.equal(merged(**batch, return_logits=True).logits, loaded(**batch, return_logits=True).logits)


def _mean_cosine(rows: torch.Tensor) -> float:
    unit = torch.nn.functional.normalize(rows.detach().float(), dim=-1)
    sim = unit @ unit.T
    return float((sim.sum() - sim.diagonal().sum()) / (len(rows) * (len(rows) - 1)))


def test_merged_code_rows_follow_the_projected_blocks_and_differ(merged):
    """A code's row comes from the projection of a 2x2 block filled with its feature vector (the projector's input
    is 4x wider): the rows keep that geometry, and are as distinct from each other as the text rows are."""
    table = merged.llm.get_input_embeddings().weight.detach()
    rows, text = table[merged.config.code_offset:], table[: merged.config.code_offset]
    with torch.no_grad():
        proj = merged.projector(merged.vqrae.code_features().repeat(1, 4))
    cos = torch.nn.functional.cosine_similarity(proj - proj.mean(0), rows - text.mean(0), dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-4)
    assert _mean_cosine(rows) < _mean_cosine(text) + 0.1


def test_merge_must_divide_the_grid_and_cannot_read_codes():
    with pytest.raises(ValueError, match="divide"):
        UnifiedConfig(grid_size=[4, 4], feature_merge=3)
    with pytest.raises(ValueError, match="codes"):
        UnifiedConfig(grid_size=[4, 4], feature_merge=2, image_input="codes")
    with pytest.raises(ValueError, match="feature_merge"):
        UnifiedConfig(grid_size=[4, 4], feature_merge=0)


def test_calibration_removes_the_common_direction_and_matches_the_text_scale():
    g = torch.Generator().manual_seed(0)
    common = torch.randn(32, generator=g) * 10
    inputs = common + torch.randn(512, 32, generator=g)  # one large shared direction, as the VQRAE's features
    torch.manual_seed(0)
    proj = build_projector("mlp2x_gelu", 32, 16)
    stats = calibrate_projector(proj, inputs, target_radius=0.35)
    assert stats["mean_cosine_before"] > 0.9 and stats["mean_cosine_after"] < 0.2
    with torch.no_grad():
        out = proj(inputs)
    assert out.mean(0).norm() < 0.05 * 0.35
    assert abs(float(out.norm(dim=-1).mean()) / 0.35 - 1) < 0.05
    assert set(dict(proj.named_parameters())) == {"0.weight", "0.bias", "2.weight", "2.bias"}  # same keys


def test_model_calibration_rederives_the_code_rows(merged):
    um = tiny_unified_model(seed=1, feature_merge=2)
    g = torch.Generator().manual_seed(0)
    feats = um.vqrae.encode(torch.rand(8, 3, 32, 32, generator=g))
    before = um.llm.get_input_embeddings().weight[um.config.code_offset:].clone()
    stats = um.calibrate_projector(feats)
    table = um.llm.get_input_embeddings().weight.detach()
    rows, text = table[um.config.code_offset:], table[: um.config.code_offset]
    assert not torch.allclose(rows, before)
    with torch.no_grad():
        proj = um.projector(um.vqrae.code_features().repeat(1, 4))
        slots = um.project_features(feats)
    cos = torch.nn.functional.cosine_similarity(proj - proj.mean(0), rows - text.mean(0), dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-4)
    radius = float((text - text.mean(0)).norm(dim=-1).mean())
    assert abs(stats["radius"] / radius - 1) < 0.05 and abs(float(slots.norm(dim=-1).mean()) / radius - 1) < 0.05


def test_conv_projector_reads_neighbours_and_trains(tmp_path):
    um = tiny_unified_model(seed=0, feature_merge=2, projector_type="conv_mlp")
    assert um.config.num_image_features == 4
    g = torch.Generator().manual_seed(0)
    feats = um.vqrae.encode(torch.rand(2, 3, 32, 32, generator=g))
    um.calibrate_projector(feats)
    with torch.no_grad():
        base = um.project_features(feats)
        moved = feats.clone()
        moved[:, 0] += 5.0  # one feature vector of the top-left block changes
        out = um.project_features(moved)
    changed = (out - base).norm(dim=-1)[0] > 1e-6
    assert changed.all()  # every position of the 2x2 merged grid sees it through the 3x3 convolutions
    batch = UnifiedCollator(um.processor)([_record()])
    um.train()
    loss = um(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and um.projector.conv1.weight.grad.abs().sum() > 0
    um.eval()
    um.save_pretrained(tmp_path / "m")
    loaded = UnifiedModel.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(um(**batch, return_logits=True).logits, loaded(**batch, return_logits=True).logits)
    plain = tiny_unified_model(seed=0, feature_merge=2)
    with torch.no_grad():
        p0 = plain.project_features(feats)
        p1 = plain.project_features(moved)
    assert ((p1 - p0).norm(dim=-1)[0] > 1e-6).tolist() == [True, False, False, False]  # the MLP: its own block only
