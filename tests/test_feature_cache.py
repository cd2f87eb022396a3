"""data/feature_cache.py: codes / features computed once per (tokenizer, data set), cached on disk, reused."""

from __future__ import annotations

import logging
import pickle
import socket

import numpy as np
import pytest
import torch

from vqrae.data import feature_cache
from vqrae.data.feature_cache import (
    CachedDataset,
    CachedValues,
    EncodedCache,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from vqrae.data.images import UnreadableImage
from vqrae.tokenizer import VQRAE
from vqrae.tokenizer.testing import tiny_vqrae_config

NUM = 6


def make_vq(seed: int = 0) -> VQRAE:
    torch.manual_seed(seed)
    return VQRAE(tiny_vqrae_config()).eval()


def count_encoder_calls(vq: VQRAE, training: list[bool] | None = None) -> list[int]:
    """Wrap the encoder's forward; the returned list holds the number of images it has seen per call (and
    `training`, when given, whether the encoder was in training mode then)."""
    calls: list[int] = []
    forward = vq.encoder.forward

    def counted(pixels):
        calls.append(pixels.shape[0])
        if training is not None:
            training.append(vq.encoder.training)
        return forward(pixels)

    vq.encoder.forward = counted
    return calls


@pytest.fixture
def vq():
    return make_vq()


@pytest.fixture
def items():
    g = torch.Generator().manual_seed(1)
    return [{"pixels": torch.rand(3, 32, 32, generator=g), "name": f"img{i}", "caption": f"c{i}"} for i in range(NUM)]


def complete_caches(root):
    return sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file() and not p.name.startswith("."))


def test_miss_then_hit_encodes_once(tmp_path, vq, items, caplog):
    training: list[bool] = []
    calls = count_encoder_calls(vq.train(), training)
    cache = EncodedCache(tmp_path, vq, "codes", batch_size=4)
    with caplog.at_level(logging.INFO, logger=feature_cache.__name__):
        first = cache.get("toy", items, lambda item: item["pixels"])
        assert calls == [4, 2] and "cache miss:" in caplog.text
        caplog.clear()
        second = EncodedCache(tmp_path, vq, "codes", batch_size=4).get("toy", items, lambda item: item["pixels"])
    assert calls == [4, 2], "a hit must not run the encoder"
    assert training == [False, False] and vq.training, "built in eval mode, and the mode given back after"
    assert "cache hit:" in caplog.text and "cache miss:" not in caplog.text
    assert second.path == first.path and torch.equal(second[:], first[:])
    assert complete_caches(tmp_path) == [first.path.name]
    assert first.path.name.startswith(f"codes-{tokenizer_fingerprint(vq, 'codes')}-")


@pytest.mark.parametrize("what", ["codes", "features"])
def test_cached_values_equal_direct_output(tmp_path, vq, items, what):
    cached = EncodedCache(tmp_path, vq, what, batch_size=4).get("toy", items, lambda item: item["pixels"])
    pixels = torch.stack([it["pixels"] for it in items])
    with torch.no_grad():
        if what == "codes":
            direct = vq.tokenize(pixels).reshape(NUM, -1)
            assert cached.array.dtype == np.int16 and cached[0].dtype == torch.long
            assert torch.equal(cached[:], direct)
        else:
            direct = vq.encode(pixels)
            assert cached.array.dtype == np.float16 and cached[0].dtype == torch.float16
            assert cached.shape == (NUM, vq.num_tokens, vq.feature_dim)
            # float16 storage: equal up to its rounding (relative step 2^-11)
            assert torch.allclose(cached[:].float(), direct, rtol=2e-3, atol=1e-3)
    assert cached.valid.all() and cached.num_invalid == 0
    assert torch.equal(cached[[5, 1]], cached[torch.tensor([5, 1])]) and torch.equal(cached[2], cached[:][2])


def test_changing_one_weight_invalidates(tmp_path, vq, items):
    calls = count_encoder_calls(vq)
    codes, feats = EncodedCache(tmp_path, vq, "codes"), EncodedCache(tmp_path, vq, "features")
    old_codes, old_feats = codes.get("toy", items), feats.get("toy", items)
    assert len(calls) == 2
    with torch.no_grad():  # decoder: neither codes nor features depend on it
        vq.decoder.head.weight.add_(1.0)
    assert codes.get("toy", items).path == old_codes.path and feats.get("toy", items).path == old_feats.path
    assert len(calls) == 2
    with torch.no_grad():  # quantizer: codes only
        vq.quantizer.codebook_map.weight[0, 0] += 0.5
    assert feats.get("toy", items).path == old_feats.path and len(calls) == 2
    new_codes = codes.get("toy", items)
    assert new_codes.path != old_codes.path and len(calls) == 3
    with torch.no_grad():  # one encoder weight: both
        next(vq.encoder.parameters()).view(-1)[0] += 0.5
    new_feats = feats.get("toy", items)
    assert new_feats.path != old_feats.path and len(calls) == 4
    assert not torch.equal(new_feats[:], old_feats[:])
    direct = vq.encode(torch.stack([it["pixels"] for it in items]))
    assert torch.allclose(new_feats[:].float(), direct, rtol=2e-3, atol=1e-3)  # recomputed with the new weights
    assert len(complete_caches(tmp_path)) == 4  # old caches stay; they are just no longer looked up


def test_settings_that_are_not_weights_invalidate(vq):
    before = tokenizer_fingerprint(vq, "features")
    vq.encoder.image_mean = [0.4, 0.5, 0.5]  # normalisation changes the features without touching a weight
    assert tokenizer_fingerprint(vq, "features") != before
    codes = tokenizer_fingerprint(vq, "codes")
    vq.config.l2_normalize = True
    assert tokenizer_fingerprint(vq, "codes") != codes


def test_dataset_key_separates_caches(tmp_path, vq, items):
    calls = count_encoder_calls(vq)
    cache = EncodedCache(tmp_path, vq, "codes")
    a, b = cache.get("shapes-train", items), cache.get("shapes-val", items)
    assert a.path != b.path and len(calls) == 2 and len(complete_caches(tmp_path)) == 2
    assert a.meta["dataset_key"] == "shapes-train" and b.meta["dataset_key"] == "shapes-val"
    cache.get("shapes-train", items[:4])  # same key, different size: rebuilt rather than served wrong
    assert len(calls) == 3
    with pytest.raises(ValueError, match="dataset_key"):
        cache.get("", items)
    with pytest.raises(ValueError, match="empty"):
        cache.get("nothing", [])


def test_crash_mid_build_leaves_no_complete_looking_cache(tmp_path, vq, items, monkeypatch):
    cache = EncodedCache(tmp_path, vq, "codes", batch_size=2)
    final = cache.path_for("toy")

    def dies_at_4(item):
        if item["name"] == "img4":
            raise RuntimeError("killed")
        return item["pixels"]

    # A real crash skips all clean-up: simulate it by making the clean-up do nothing.
    monkeypatch.setattr(feature_cache.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="killed"):
        cache.get("toy", items, dies_at_4)
    monkeypatch.undo()
    leftovers = list(tmp_path.iterdir())
    assert not final.exists() and complete_caches(tmp_path) == []
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".partial-")
    assert (leftovers[0] / "values.npy").is_file() and not (leftovers[0] / "meta.json").exists()
    # Pretend it belongs to a process that is gone, and add one of another host, which cannot be checked.
    host = socket.gethostname()
    dead = leftovers[0].rename(tmp_path / f".partial-{final.name}-{host}-99999999")
    other = tmp_path / f".partial-{final.name}-not-{host}-1"
    other.mkdir()

    calls = count_encoder_calls(vq)
    cached = cache.get("toy", items)
    assert len(calls) == 3 and cached.path == final and cached.valid.all()
    assert not dead.exists() and other.exists()

    # An ordinary exception cleans up its partial folder itself.
    with pytest.raises(RuntimeError, match="killed"):
        EncodedCache(tmp_path, vq, "codes", batch_size=2).get("toy-2", items, dies_at_4)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, other.name])


def test_unreadable_images_are_recorded_not_fatal(tmp_path, vq, items):
    def image_fn(item):
        if item["name"] == "img1":
            raise UnreadableImage("img1: truncated")
        if item["name"] == "img3":
            raise OSError("img3: gone")
        return item["pixels"]

    calls = count_encoder_calls(vq)
    cached = EncodedCache(tmp_path, vq, "features").get("toy", items, image_fn)
    assert cached.valid.tolist() == [True, False, True, False, True, True]
    assert cached.num_invalid == 2 and set(cached.invalid) == {1, 3} and "truncated" in cached.invalid[1]
    assert sum(calls) == 4  # only readable images are encoded
    assert not cached[1].any() and cached[0].any()
    again = EncodedCache(tmp_path, vq, "features").get("toy", items, image_fn)
    assert again.num_invalid == 2 and sum(calls) == 4

    ds = CachedDataset(items, again, field="vqrae_features")
    assert ds.valid_indices() == [0, 2, 4, 5]
    item = ds[2]
    assert "pixels" not in item and item["caption"] == "c2" and torch.equal(item["vqrae_features"], again[2])
    assert "pixels" in items[2]  # the base items are not modified


def test_bad_image_fn_output_names_the_item(tmp_path, vq, items):
    with pytest.raises(ValueError, match=r"item 0 gave \(3, 16, 16\)"):
        EncodedCache(tmp_path, vq, "codes").get("toy", items, lambda item: item["pixels"][:, :16, :16])
    assert complete_caches(tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_fingerprint_stable_across_fresh_models_and_sensitive():
    a, b = make_vq(seed=0), make_vq(seed=0)
    assert weights_fingerprint(a) == weights_fingerprint(b)
    assert tokenizer_fingerprint(a, "codes") == tokenizer_fingerprint(b, "codes")
    assert len(weights_fingerprint(a)) == 16 and int(weights_fingerprint(a), 16) >= 0
    assert weights_fingerprint(make_vq(seed=1), ("encoder.",)) != weights_fingerprint(a, ("encoder.",))
    enc = weights_fingerprint(b, ("encoder.",))
    with torch.no_grad():
        b.decoder.head.weight[0, 0] += 1e-3
    assert weights_fingerprint(b) != weights_fingerprint(a)  # everything covered
    assert weights_fingerprint(b, ("encoder.",)) == enc  # the decoder is not under encoder.
    b.quantizer.codebook[0, 0] += 1.0  # a buffer counts like a weight
    assert weights_fingerprint(b, ("quantizer.",)) != weights_fingerprint(a, ("quantizer.",))
    assert weights_fingerprint(a.to(torch.float64)) != weights_fingerprint(make_vq(seed=0))  # dtype counts
    with pytest.raises(ValueError, match="no weights"):
        weights_fingerprint(a, ("nothing.",))


def test_cached_values_pickle_by_path_and_dataset_checks(tmp_path, vq, items):
    cached = EncodedCache(tmp_path, vq, "codes").get("toy", items)
    blob = pickle.dumps(cached)
    assert len(blob) < 1000  # the path, not the data
    back = pickle.loads(blob)
    assert isinstance(back, CachedValues) and torch.equal(back[:], cached[:])
    with pytest.raises(ValueError, match="cache holds 6 items but the data set has 5"):
        CachedDataset(items[:5], cached, field="codes")
    with pytest.raises(ValueError, match="what must be one of"):
        EncodedCache(tmp_path, vq, "pixels")


def test_distributed_rank_0_builds_and_the_others_load(tmp_path, vq, items, monkeypatch):
    """torch.distributed stood in for (one process): rank 1 never encodes; it loads what rank 0 built, and fails
    clearly when rank 0 failed or its cache is not visible."""
    rank, sent = [0], []

    def broadcast(objects, src):
        assert src == 0
        if rank[0] == 0:
            sent.append(objects[0])
        else:
            objects[0] = sent[-1]

    tdist = feature_cache.torch.distributed
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_world_size", lambda: 2)
    monkeypatch.setattr(tdist, "get_rank", lambda: rank[0])
    monkeypatch.setattr(tdist, "broadcast_object_list", broadcast)
    calls = count_encoder_calls(vq)
    built = EncodedCache(tmp_path, vq, "codes").get("toy", items)
    assert sent == [None] and len(calls) == 1
    rank[0] = 1
    loaded = EncodedCache(tmp_path, vq, "codes").get("toy", items)
    assert len(calls) == 1 and loaded.path == built.path and torch.equal(loaded[:], built[:])
    with pytest.raises(FileNotFoundError, match="all nodes share"):
        EncodedCache(tmp_path / "elsewhere", vq, "codes").get("toy", items)
    sent.append("ValueError('bad image_fn')")
    with pytest.raises(RuntimeError, match="rank 0 failed.*bad image_fn"):
        EncodedCache(tmp_path, vq, "codes").get("toy", items)
    rank[0] = 0
    with pytest.raises(ValueError, match="image_fn must return"):
        EncodedCache(tmp_path, vq, "codes").get("other", items, lambda item: item["pixels"][:2])
    assert "image_fn must return" in sent[-1]  # the other ranks hear of it instead of waiting forever
