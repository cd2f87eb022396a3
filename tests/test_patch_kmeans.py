"""PatchKMeansVQ (`quantizer: patch-kmeans`): the API SimVQ has, codes that follow pixels, dead-code restarts, save
and load, one codebook across processes."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from vqrae.tokenizer import VQRAE, PatchKMeansVQ, VQRAEConfig
from vqrae.tokenizer.testing import tiny_vqrae_config


def tiny(**kwargs) -> VQRAE:
    torch.manual_seed(0)
    return VQRAE(tiny_vqrae_config("siglip", quantizer="patch-kmeans", **kwargs))


def test_api_save_load_and_eval_mode_leaves_the_codebook_alone(tmp_path):
    vq = tiny()
    assert isinstance(vq.quantizer, PatchKMeansVQ) and not bool(vq.quantizer.initialized)
    pixels = torch.rand(4, 3, 32, 32)
    out = vq.train()(pixels)  # the first training batch seeds the codebook
    assert bool(vq.quantizer.initialized) and out.codes.shape == (4, 4, 4)
    assert out.codebook_loss > 0 and out.quantizer_loss.requires_grad
    vq.eval()
    before = vq.quantizer.centroids.clone()
    codes = vq.tokenize(pixels)
    images = vq.decode(codes)
    assert images.shape == (4, 3, 32, 32) and torch.equal(vq.quantizer.centroids, before)
    assert torch.allclose(vq.decode_features(vq.encode(pixels)), images, atol=1e-6)
    assert vq.code_features().shape == (vq.config.codebook_size, vq.feature_dim)
    vq.save_pretrained(tmp_path)
    loaded = VQRAE.from_pretrained(tmp_path).eval()
    assert loaded.config.quantizer == "patch-kmeans" and bool(loaded.quantizer.initialized)
    assert torch.equal(loaded.quantizer.centroids, vq.quantizer.centroids)
    assert torch.equal(loaded.tokenize(pixels), codes) and torch.allclose(loaded.decode(codes), images)


def test_patches_are_in_the_decoder_heads_order():
    vq = tiny()
    pixels = torch.rand(2, 3, 32, 32)
    patches = vq.patches(pixels)  # (B, N, p*p*3) in [-1, 1]
    from einops import rearrange

    back = rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=4, p=8, q=8)
    assert torch.allclose((back + 1) / 2, pixels, atol=1e-6)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="quantizer must be one of"):
        VQRAEConfig(quantizer="kmeans")
    with pytest.raises(ValueError, match="ema_decay"):
        VQRAEConfig(quantizer="patch-kmeans", ema_decay=1.0)


def _patterns(n_patterns: int = 8, dim: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    patterns = torch.rand(n_patterns, dim, generator=g) * 2 - 1  # "patches"
    mix = torch.randn(dim, 24, generator=g)  # features: an entangled linear view of the patch, plus noise
    return patterns, mix


def _batch(patterns, mix, n: int = 256, generator=None):
    labels = torch.randint(len(patterns), (n,), generator=generator)
    target = patterns[labels] + 0.02 * torch.randn(n, patterns.shape[1], generator=generator)
    feats = target @ mix + 0.05 * torch.randn(n, mix.shape[1], generator=generator)
    return labels, feats[None], target[None]


def purity(codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of tokens whose code's majority pattern is their own."""
    right = 0
    for c in codes.unique():
        right += torch.bincount(labels[codes == c]).max().item()
    return right / len(labels)


def test_codes_come_to_follow_the_pixels():
    torch.manual_seed(0)
    patterns, mix = _patterns()
    q = PatchKMeansVQ(dim=24, patch_size=2, codebook_size=16, head_dim=64, ema_decay=0.9).train()
    opt = torch.optim.Adam(q.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(2)
    labels, feats, target = _batch(patterns, mix, generator=g)
    first = q(feats, target).codebook_loss.item()
    for _ in range(300):
        labels, feats, target = _batch(patterns, mix, generator=g)
        out = q(feats, target)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.codebook_loss.item() < 0.1 * first  # the head learned to draw each token's patch
    q.eval()
    labels, feats, _ = _batch(patterns, mix, n=512, generator=g)
    assert purity(q.lookup(feats)[0], labels) > 0.98
    # each used code's centroid sits on its pattern, and its decoder vector is the mean feature of its tokens
    codes = q.lookup(feats)[0]
    for c in codes.unique()[:4]:
        members = codes == c
        pattern = patterns[torch.bincount(labels[members]).argmax()]
        assert (q.centroids[c] - pattern).abs().max() < 0.2
        assert (q.code_patch[c] - pattern).abs().max() < 0.1  # the mean true patch: sharper than the centroid
        assert torch.allclose(q.code_embed[c], feats[0][members].mean(0), atol=0.5)


def test_a_dead_code_restarts_on_a_token_it_would_serve():
    torch.manual_seed(0)
    q = PatchKMeansVQ(dim=8, patch_size=1, codebook_size=4, head_dim=16, dead_code_threshold=0.5).train()
    z = torch.randn(1, 64, 8)
    q(z)  # seeds
    q.cluster_size[2] = 0.0  # code 2 starved: it must move onto one of this batch's predicted patches
    q.centroids[2] = 100.0
    q(z)
    preds = q.predict_patches(z)[0].detach()
    assert (q.centroids[2] - preds).abs().amax(dim=1).min() < 1e-5
    assert q.cluster_size[2] == pytest.approx(1.0)


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial head on both ranks, as the engine does
    q = PatchKMeansVQ(dim=8, patch_size=1, codebook_size=16, head_dim=16, dead_code_threshold=0.5).train()
    torch.manual_seed(100 + rank)  # but different data (and RNG) per rank
    for _ in range(5):
        q(torch.randn(1, 64, 8) + rank)
    out[rank] = {k: v.clone() for k, v in q.state_dict().items() if not k.startswith("head")}
    dist.destroy_process_group()


def test_every_process_keeps_the_same_codebook():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    a, b = out[0], out[1]
    assert bool(a["initialized"])
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_decoder_draws_a_correction_on_the_codes_patches():
    """With its head's output at zero, the decoder draws exactly each code's patch (a table of the codes); the
    continuous path draws the pixel head's patches."""
    vq = tiny()
    pixels = torch.rand(2, 3, 32, 32)
    vq.train()(pixels)  # seeds the codebook
    vq.eval()
    torch.nn.init.zeros_(vq.decoder.head.weight)
    torch.nn.init.zeros_(vq.decoder.head.bias)
    codes = vq.tokenize(pixels).flatten(1)
    from einops import rearrange

    def draw(patches):
        return ((rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=4, p=8, q=8) + 1) / 2).clamp(0, 1)

    assert torch.allclose(vq.decode(codes), draw(vq.quantizer.code_patch[codes]), atol=1e-6)
    feats = vq.encode(pixels)
    with torch.no_grad():
        assert torch.allclose(vq.decode_features(feats, quantize=False), draw(vq.quantizer.head(feats)), atol=1e-6)

