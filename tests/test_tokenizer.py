"""The VQRAE tokenizer: API shapes, save/load, encoder adapters loaded by path, gradients, quantizer search/usage."""

from __future__ import annotations

import math

import pytest
import torch

from vqrae.tokenizer import VQRAE, CodebookUsage, SimVQ, VQRAEConfig, nearest_code
from vqrae.tokenizer.testing import TINY_DINOV2, TINY_SIGLIP, tiny_vqrae_config


@pytest.fixture(params=["siglip", "dinov2", "timm"])
def vq(request):
    torch.manual_seed(0)
    return VQRAE(tiny_vqrae_config(request.param)).eval()


def test_api_shapes_and_ranges(vq):
    pixels = torch.rand(3, 3, 32, 32)
    feats = vq.encode(pixels)
    assert feats.shape == (3, 16, vq.feature_dim) and feats.dtype == torch.float32
    codes = vq.tokenize(pixels)
    assert codes.shape == (3, 4, 4) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < vq.config.codebook_size
    images = vq.decode(codes)
    assert images.shape == (3, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(vq.decode(codes.flatten(1)), images)  # (B, h*w) works too
    assert torch.allclose(vq.decode_features(feats), images, atol=1e-6)  # features snapped to codes == codes
    assert vq.decode_features(feats, quantize=False).shape == images.shape
    out = vq(pixels)
    assert out.reconstruction.shape == images.shape and torch.equal(out.codes, codes)
    assert torch.allclose(out.features, feats) and out.quantizer_loss.ndim == 0
    assert vq.code_features().shape == (vq.config.codebook_size, vq.feature_dim)


def test_bad_inputs_raise_clear_errors(vq):
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        vq.encode(torch.rand(1, 3, 48, 48))
    with pytest.raises(ValueError, match="codes must lie"):
        vq.decode(torch.full((1, 16), 64))
    with pytest.raises(ValueError, match="expected 16 codes"):
        vq.decode(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="encoder_type"):
        VQRAEConfig(encoder_type="clip")


def test_save_load_identical(vq, tmp_path):
    pixels = torch.rand(2, 3, 32, 32)
    vq.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    loaded = VQRAE.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.quantizer.codebook, vq.quantizer.codebook)
    assert torch.equal(loaded.encode(pixels), vq.encode(pixels))
    codes = vq.tokenize(pixels)
    assert torch.equal(loaded.tokenize(pixels), codes)
    assert torch.equal(loaded.decode(codes), vq.decode(codes))
    from transformers import AutoModel

    assert isinstance(AutoModel.from_pretrained(tmp_path), VQRAE)  # registered: loads by path with nothing else


@pytest.mark.parametrize("full_model", [False, True])
def test_siglip_encoder_loaded_by_path(tmp_path, full_model):
    from transformers import (
        SiglipConfig,
        SiglipModel,
        SiglipTextConfig,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    torch.manual_seed(1)
    vision = SiglipVisionConfig(**{k: v for k, v in TINY_SIGLIP.items() if k != "model_type"})
    if full_model:  # an image-text checkpoint, as stage 0 writes and as google/siglip2-* fixed-res checkpoints are
        text = SiglipTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, max_position_embeddings=16)
        full = SiglipModel(SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict()))
        full.save_pretrained(tmp_path)
        ref = full.vision_model
    else:
        ref = SiglipVisionModel(vision)
        ref.save_pretrained(tmp_path)
    vq = VQRAE.from_encoder("siglip", str(tmp_path), codebook_size=64, codebook_dim=48).eval()
    assert vq.image_size == 32 and vq.grid_size == (4, 4)
    pixels = torch.rand(2, 3, 32, 32)
    expected = ref.eval()(pixel_values=(pixels - 0.5) / 0.5).last_hidden_state
    assert torch.allclose(vq.encode(pixels), expected, atol=1e-5)
    # The saved tokenizer carries the encoder inline: it reloads without the original folder.
    vq.save_pretrained(tmp_path / "tok")
    assert torch.equal(VQRAE.from_pretrained(tmp_path / "tok").eval().encode(pixels), vq.encode(pixels))


@pytest.mark.parametrize("registers", [0, 2])
def test_dinov2_encoder_drops_cls_and_registers(tmp_path, registers):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(2)
    kwargs = {k: v for k, v in TINY_DINOV2.items() if k not in ("model_type", "intermediate_size")}
    if registers:
        ref = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs))
    else:
        ref = Dinov2Model(Dinov2Config(**kwargs))
    ref.save_pretrained(tmp_path)
    vq = VQRAE.from_encoder("dinov2", str(tmp_path), image_size=32, codebook_size=64, codebook_dim=48).eval()
    pixels = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    hidden = ref.eval()(pixel_values=(pixels - mean) / std).last_hidden_state
    assert hidden.shape[1] == 16 + 1 + registers
    assert torch.allclose(vq.encode(pixels), hidden[:, 1 + registers:], atol=1e-5)


def test_timm_encoder_loaded_from_local_folder(tmp_path):
    import timm
    from timm.models import save_for_hf

    from vqrae.tokenizer.testing import TINY_TIMM

    torch.manual_seed(3)
    ref = timm.create_model(TINY_TIMM["model_name"], pretrained=False, num_classes=0, **TINY_TIMM["kwargs"])
    save_for_hf(ref, str(tmp_path), model_args=TINY_TIMM["kwargs"], safe_serialization=True)
    vq = VQRAE.from_encoder("timm", str(tmp_path), image_size=32, codebook_size=64, codebook_dim=48).eval()
    pixels = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(vq.encoder.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(vq.encoder.image_std).view(1, 3, 1, 1)
    expected = ref.eval().forward_features((pixels - mean) / std)[:, ref.num_prefix_tokens:]
    assert torch.allclose(vq.encode(pixels), expected, atol=1e-5)


def test_wrong_encoder_folder_is_a_clear_error(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a siglip encoder"):
        VQRAE.from_encoder("siglip", str(tmp_path))


@pytest.mark.parametrize("trainable", [False, True])
def test_gradients(trainable):
    torch.manual_seed(0)
    vq = VQRAE(tiny_vqrae_config(freeze_encoder=not trainable)).train()
    pixels = torch.rand(2, 3, 32, 32)
    out = vq(pixels)
    loss = (out.reconstruction - pixels).pow(2).mean() + out.quantizer_loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vq.decoder.parameters())
    assert vq.quantizer.codebook_map.weight.grad.abs().sum() > 0  # W learns
    assert vq.quantizer.proj_in.weight.grad.abs().sum() > 0
    assert not vq.quantizer.codebook.requires_grad  # C is a frozen buffer, not a parameter
    assert "quantizer.codebook" not in dict(vq.named_parameters())
    enc_grads = [p.grad for p in vq.encoder.parameters()]
    if trainable:
        assert any(g is not None and g.abs().sum() > 0 for g in enc_grads)
    else:
        assert all(g is None for g in enc_grads)
        assert not any(p.requires_grad for p in vq.encoder.parameters())


def test_small_codebook_dim_warns():
    with pytest.warns(UserWarning, match="smaller than the encoder width"):
        VQRAE(tiny_vqrae_config(codebook_dim=16))


def test_chunked_search_equals_brute_force():
    torch.manual_seed(0)
    z, codebook = torch.randn(1000, 24), torch.randn(300, 24)
    brute = torch.cdist(z, codebook).argmin(dim=1)
    tiny_budget = 300 * 4 * 37 / 2**20  # 37 rows per chunk: many chunks, a ragged last one
    assert torch.equal(nearest_code(z, codebook, memory_mb=tiny_budget), brute)
    assert torch.equal(nearest_code(z, codebook, memory_mb=1024), brute)


def test_mapped_codebook_cache_follows_weight_updates():
    q = SimVQ(dim=8, codebook_size=16, codebook_dim=8).eval()
    with torch.no_grad():
        before = q.mapped_codebook().clone()
        q.codebook_map.weight.mul_(2)  # an in-place optimiser-style update
        assert torch.allclose(q.mapped_codebook(), 2 * before)


def test_mapped_codebook_is_not_cached_for_a_zero3_partitioned_map():
    q = SimVQ(dim=8, codebook_size=16, codebook_dim=8).eval()
    q.codebook_map.weight.ds_id = 0  # what deepspeed.zero marks its partitioned parameters with
    with torch.no_grad():
        q.mapped_codebook()
        assert q._cache is None


def test_usage_on_hand_made_streams():
    usage = CodebookUsage(8)
    assert usage.perplexity == 0.0 and usage.utilization == 0.0
    usage.update(torch.tensor([0, 1, 2, 3]))
    usage.update(torch.tensor([[4, 5], [6, 7]]))  # accumulates over batches of any shape
    assert usage.utilization == 1.0 and math.isclose(usage.perplexity, 8.0, rel_tol=1e-9)
    single = CodebookUsage(8).update(torch.full((100,), 3))
    assert single.utilization == 1 / 8 and math.isclose(single.perplexity, 1.0)
    skewed = CodebookUsage(4).update(torch.tensor([0, 0, 0, 1]))  # p = (3/4, 1/4)
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert skewed.utilization == 0.5 and math.isclose(skewed.perplexity, expected, rel_tol=1e-9)
    with pytest.raises(ValueError, match="codes must lie"):
        usage.update(torch.tensor([8]))


def test_l2_normalized_matching_picks_the_most_similar_direction():
    torch.manual_seed(0)
    q = SimVQ(dim=8, codebook_size=32, codebook_dim=8, l2_normalize=True).eval()
    z = torch.randn(5, 7, 8)
    with torch.no_grad():
        codes = q.lookup(z)
        ze = torch.nn.functional.normalize(q.proj_in(z), dim=-1)
        cb = q.mapped_codebook()
        assert torch.allclose(cb.norm(dim=-1), torch.ones(32))
        assert torch.equal(codes, (ze @ cb.t()).argmax(dim=-1))
    out = q(z)
    assert torch.equal(out.codes, codes) and out.quantized.shape == z.shape
