"""Readers: image folders, datasets on disk, tar shards, caption and LLaVA conversation records."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vqrae.data.readers import caption_dataset, collate, conversation_dataset, image_dataset


def png_bytes(color=(200, 30, 30), size=(24, 16), mode="RGB", fmt="PNG", **kw) -> bytes:
    img = Image.new("RGB", size, color).convert(mode) if mode != "RGBA" else Image.new("RGBA", size, color + (0,))
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def mixed_folder(tmp_path):
    """5 good images (RGB, RGBA, grayscale, EXIF-rotated, nested) and 3 unreadable ones."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    (root / "a_good.png").write_bytes(png_bytes())
    (root / "b_rgba.png").write_bytes(png_bytes(mode="RGBA"))  # fully transparent -> white
    (root / "c_gray.png").write_bytes(png_bytes((90, 90, 90), mode="L"))
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "d_rot.jpg").write_bytes(png_bytes(size=(40, 20), fmt="JPEG", exif=exif))
    (root / "sub" / "e_nested.png").write_bytes(png_bytes((10, 200, 10)))
    (root / "f_zero.png").write_bytes(b"")
    jpg = png_bytes(fmt="JPEG", size=(64, 64))
    (root / "g_trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "h_text.jpg").write_text("not an image")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_folder_skips_and_counts_unreadable(mixed_folder, caplog):
    ds = image_dataset(mixed_folder, size=16)
    assert len(ds) == 8
    caplog.set_level(logging.WARNING, logger="vqrae.data.readers")
    for _epoch in range(2):
        batches = list(DataLoader(ds, batch_size=3, collate_fn=collate))
        assert sum(b["skipped"] for b in batches) == 3  # each unreadable file counted once per epoch
        pixels = torch.cat([b["pixels"] for b in batches])
        assert pixels.shape == (8, 3, 16, 16) and 0 <= pixels.min() and pixels.max() <= 1
    names = [n for b in batches for n in b["name"]]
    assert not any(bad in n for n in names for bad in ("f_zero", "g_trunc", "h_text"))
    warned = [r.getMessage() for r in caplog.records]
    for bad in ("f_zero.png", "g_trunc.jpg", "h_text.jpg"):
        assert sum(bad in w for w in warned) == 1  # logged once each, not once per access
    by_name = {n: ds[i] for i in range(len(ds)) for n in [ds[i]["name"]]}
    rgba = next(v for k, v in by_name.items() if "b_rgba" in k)
    assert torch.allclose(rgba["pixels"], torch.ones(3, 16, 16))
    gray = next(v for k, v in by_name.items() if "c_gray" in k)["pixels"]
    assert torch.allclose(gray[0], gray[1]) and abs(gray.mean().item() - 90 / 255) < 0.02
    # EXIF orientation 6 turns the 40x20 landscape into a 20x40 portrait.
    rot = image_dataset(mixed_folder, size=None)
    portrait = next(rot[i]["pixels"] for i in range(len(rot)) if "d_rot" in rot[i]["name"])
    assert portrait.shape == (3, 40, 20)
    with pytest.raises(ValueError, match="crop"):  # a bad transform is an error, not 8 "unreadable" images
        image_dataset(mixed_folder, crop="middle")
    report = ds.scan()
    assert report["total"] == 8 and report["readable"] == 5 and len(report["skipped"]) == 3


def test_check_command(mixed_folder, tmp_path, capsys):
    from vqrae.cli.cli import main

    assert main(["data", "check", str(mixed_folder)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"total": 8, "readable": 5, "skipped": 3}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"")
    assert main(["data", "check", str(bad)]) == 2
    assert "nothing readable" in capsys.readouterr().err


def test_nothing_readable_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        image_dataset(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"")
    (bad / "y.jpg").write_text("nope")
    with pytest.raises(ValueError, match="no readable image"):
        image_dataset(bad)[0]
    with pytest.raises(FileNotFoundError, match="missing"):
        image_dataset(tmp_path / "missing")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_tar_shards(tmp_path):
    shard0, shard1 = tmp_path / "shard-000.tar", tmp_path / "shard-001.tar"
    with tarfile.open(shard0, "w") as tar:
        _add(tar, "s/000.png", png_bytes((255, 0, 0)))
        _add(tar, "s/000.txt", b"a red rectangle\n")
        _add(tar, "s/001.jpg", b"corrupt")
        _add(tar, "s/001.txt", b"broken")
        _add(tar, "s/002.png", png_bytes((0, 0, 255)))
        _add(tar, "s/002.json", json.dumps({"caption": "a blue rectangle", "id": 2}).encode())
    with tarfile.open(shard1, "w") as tar:
        _add(tar, "003.png", png_bytes((0, 255, 0)))
        _add(tar, "003.txt", b"a green rectangle")
        _add(tar, "004.png", png_bytes((255, 255, 0)))
        _add(tar, "004.txt", b"a yellow rectangle")
    # A damaged shard: the first sample is complete, the second is cut off.
    data = shard1.read_bytes()
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "d.tar").write_bytes(data[:2048 + 512])

    ds = caption_dataset(tmp_path, size=8)  # a folder of shards
    assert len(ds) == 5
    items = [ds[i] for i in range(5)]
    # The corrupt 001.jpg is skipped: its index returns the next sample, with the next sample's caption.
    assert [it["caption"] for it in items] == ["a red rectangle", "a blue rectangle", "a blue rectangle",
                                               "a green rectangle", "a yellow rectangle"]
    assert [it["skipped"] for it in items] == [0, 1, 0, 0, 0] and items[1]["pixels"][2].mean() > 0.9
    assert image_dataset(str(tmp_path / "shard-*.tar"), size=8)[4]["pixels"][2].mean() < 0.1
    damaged = image_dataset(tmp_path / "damaged" / "d.tar", size=None)
    assert len(damaged) == 1 and damaged.source.bad_shards


def test_datasets_on_disk(tmp_path):
    import datasets

    rows = {"image": [{"bytes": png_bytes((0, 0, 255)), "path": None}, {"bytes": b"\x89PNG broken", "path": None},
                      {"bytes": png_bytes((255, 255, 255), size=(30, 10)), "path": None}],
            "caption": ["blue", "broken", "white"]}
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features({"image": datasets.Image(),
                                                                       "caption": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "hf"))
    ds.to_parquet(str(tmp_path / "data.parquet"))
    for path in (tmp_path / "hf", tmp_path / "data.parquet"):
        caps = caption_dataset(path, size=10)
        items = [caps[i] for i in range(3)]
        assert [it["caption"] for it in items] == ["blue", "white", "white"]
        assert [it["skipped"] for it in items] == [0, 1, 0] and items[2]["pixels"].shape == (3, 10, 10)
    with pytest.raises(ValueError, match="conversations"):
        conversation_dataset(tmp_path / "hf")


def test_records(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png_bytes())
    good = [
        {"id": "r0", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                                                          {"from": "gpt", "value": "Red."}]},
        {"id": "r1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
        {"id": "r2", "image": "missing.png", "conversations": [{"from": "user", "value": "<image> What?"},
                                                                {"from": "assistant", "value": "A box."}]},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(good))
    ds = conversation_dataset(tmp_path / "llava.json", image_root=tmp_path / "img", size=8)
    first, text_only = ds[0], ds[1]
    assert first["id"] == "r0" and first["pixels"].shape == (3, 8, 8) and first["conversations"] == good[0][
        "conversations"]
    assert text_only["pixels"] is None and text_only["conversations"][1]["value"] == "Hello."
    third = ds[2]  # its image is missing: skipped, counted, a neighbour returned
    assert third["skipped"] == 1 and third["id"] == "r0"
    assert [t["from"] for t in ds.source.extras[2]["conversations"]] == ["human", "gpt"]

    caps = tmp_path / "caps.jsonl"
    caps.write_text('{"image": "a.png", "caption": "a red box"}\n\n{"file_name": "a.png", "caption": "red"}\n')
    cds = caption_dataset(caps, image_root=tmp_path / "img", size=None)
    assert [cds[i]["caption"] for i in range(2)] == ["a red box", "red"]

    conv = lambda *turns, **kw: {"image": "a.png", "conversations": [dict(zip(("from", "value"), t)) for t in turns]} | kw
    bad_convs = {
        "turn 1 is from human": conv(("human", "<image>\nq"), ("human", "q2")),
        "unknown role 'bot'": conv(("human", "<image>\nq"), ("bot", "a")),
        "last turn must be a gpt": conv(("human", "<image>\nq")),
        "exactly one <image>": conv(("human", "q"), ("gpt", "a")),
        "placeholder but no 'image'": {"conversations": [{"from": "human", "value": "<image>"},
                                                         {"from": "gpt", "value": "a"}]},
        "non-empty list": {"image": "a.png", "conversations": []},
        "turn 0 must be": conv(("human", 5), ("gpt", "a")),
    }
    for k, (msg, rec) in enumerate(bad_convs.items()):
        path = tmp_path / f"bad{k}.json"
        path.write_text(json.dumps([good[0], good[1], rec]))
        with pytest.raises(ValueError, match=rf"bad{k}\.json: record 2.*{msg}"):
            conversation_dataset(path, image_root=tmp_path / "img")
    bad_caps = {"'caption' must be": '{"image": "a.png"}', "'image' must be": '{"caption": "x"}',
                "expected a JSON object": '["a.png", "x"]', "line 2 is not valid JSON": '{"image": '}
    for k, (msg, line) in enumerate(bad_caps.items()):
        path = tmp_path / f"badcap{k}.jsonl"
        path.write_text('{"image": "a.png", "caption": "ok"}\n' + line + "\n")
        with pytest.raises(ValueError, match=rf"badcap{k}\.jsonl.*{msg}"):
            caption_dataset(path, image_root=tmp_path / "img")
    with pytest.raises(ValueError, match="record 1"):
        path = tmp_path / "badcap_index.jsonl"
        path.write_text('{"image": "a.png", "caption": "ok"}\n{"image": "a.png", "caption": ""}\n')
        caption_dataset(path)
    with pytest.raises(ValueError, match="no caption records"):
        caption_dataset(tmp_path / "img")


def test_shapes_dataset_matches_written_files(tmp_path):
    from vqrae.data.readers import ShapesDataset
    from vqrae.data.shapes import ShapesConfig
    from vqrae.data.shapes_writer import write_shapes

    cfg = ShapesConfig(size=32)
    write_shapes(tmp_path, cfg, {"val": 5}, seed=3, workers=1, formats=("folder",), progress=False)
    live = ShapesDataset(5, cfg, seed=3, split="val")
    disk = caption_dataset(tmp_path / "val" / "metadata.jsonl", size=None)
    for i in range(5):
        assert torch.equal(live[i]["pixels"], disk[i]["pixels"]) and live[i]["caption"] == disk[i]["caption"]
    batch = collate([live[0], live[1]])
    assert batch["pixels"].shape == (2, 3, 32, 32) and batch["skipped"] == 0 and len(batch["conversations"]) == 2
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(3, cfg, split="dev")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "val" / "images" / "000002.png")),
                          (live[2]["pixels"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
