"""`vqrae chat` driven through stdin (draw, then discuss the drawing) and `vqrae generate`, with their errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqrae.cli.cli import main
from vqrae.unified_model import UnifiedModel
from vqrae.unified_model.testing import tiny_unified_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("um")
    tiny_unified_model(seed=0).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "photo.png"
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(48, 40, 3, generator=g) * 255).byte().numpy()).save(path)
    return path


def _chat(monkeypatch, capsys, args, lines):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code = main(["chat", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_chat_draw_then_ask_about_the_drawing(model_dir, photo, tmp_path, monkeypatch, capsys):
    seen = []  # every embedding call, to check what the model was shown
    real_embed = UnifiedModel.embed

    def spy(self, input_ids, pixel_values=None, image_features=None):
        seen.append((input_ids.clone(), None if pixel_values is None else pixel_values.clone()))
        return real_embed(self, input_ids, pixel_values, image_features)

    monkeypatch.setattr(UnifiedModel, "embed", spy)
    lines = ["/help", "/draw a red circle on the left", "what colour is the circle?",
             f"/image {photo}", "and this one?", "/image /no/such.png", "/bogus", "/draw   ",
             f"/save {tmp_path / 't.json'}", "/reset", "hello", "/quit", "never read"]
    code, out, err = _chat(monkeypatch, capsys, ["--model", str(model_dir), "--out-dir", str(tmp_path / "draw"),
                                                 "--max-new-tokens", "5"], lines)
    assert code == 0
    assert "/draw PROMPT" in out and "> " not in out  # help shown; no prompt echo on a pipe
    drawn = tmp_path / "draw" / "draw_001.png"
    assert f"(drew {drawn})" in out and Image.open(drawn).size == (32, 32)
    # three bad lines, three one-line errors, and the session went on
    assert err.count("error:") == 3 and "/no/such.png" in err and "unknown command /bogus" in err
    assert "empty prompt" in err
    transcript = json.loads((tmp_path / "t.json").read_text())
    roles = [m["role"] for m in transcript["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert transcript["messages"][0]["content"] == "Generate an image of: a red circle on the left"
    assert transcript["messages"][1]["content"] == "<image>"
    assert transcript["messages"][4]["content"].startswith("<image>\n")
    assert transcript["images"] == [str(drawn), str(photo)]
    # The question about the drawing was answered with the drawing's features in the prompt: the first text
    # prompt after /draw carried exactly the saved PNG's pixels.
    model = UnifiedModel.from_pretrained(model_dir)
    text_calls = [(ids, px) for ids, px in seen if px is not None]
    ids, px = text_calls[0]
    assert int((ids == model.config.image_token_id).sum()) == model.config.num_image_features
    assert torch.allclose(px[0], model.processor.image_tensor(str(drawn)))
    ids, px = text_calls[1]  # the next question saw both images, in order
    assert px.shape[0] == 2 and torch.allclose(px[1], model.processor.image_tensor(str(photo)))
    # after /reset, "hello" was asked without images
    assert seen[-1][1] is None


def test_chat_attaches_image_from_command_line(model_dir, photo, tmp_path, monkeypatch, capsys):
    code, _out, err = _chat(monkeypatch, capsys, ["--model", str(model_dir), "--image", str(photo),
                                                 "--max-new-tokens", "3"], ["what is this?",
                                                                            f"/save {tmp_path / 's.json'}"])
    assert code == 0 and err == ""
    t = json.loads((tmp_path / "s.json").read_text())
    assert t["images"] == [str(photo)] and t["messages"][0]["content"].startswith("<image>\n")


@pytest.mark.parametrize("args, match", [
    (["--model", "/no/such/model"], "model folder not found"),
    (["--temperature", "-1"], "temperature"),
    (["--draw-top-p", "1.5"], "top_p"),
    (["--image", "/no/such.png"], "/no/such.png"),
])
def test_chat_bad_input_one_line_exit_2(model_dir, monkeypatch, capsys, args, match):
    full = (["--model", str(model_dir)] if "--model" not in args else []) + args
    code, _out, err = _chat(monkeypatch, capsys, full, ["hi"])
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1


def test_generate_writes_pngs_grids_and_settings(model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red circle", "tag": "x"}\n\n{"prompt": "a blue square"}\n')
    out = tmp_path / "out"
    code = main(["generate", "--model", str(model_dir), "--prompts", str(prompts), "--num-images", "3",
                 "--cfg-scale", "2.5", "--temperature", "0.9", "--top-k", "20", "--top-p", "0.95", "--seed", "5",
                 "--batch-size", "4", "--out", str(out)])
    assert code == 0
    recs = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and [r["seed"] for r in recs] == [5, 6, 7, 8, 9, 10]
    assert recs[3]["prompt"] == "a blue square" and recs[3]["cfg_scale"] == 2.5 and recs[3]["top_k"] == 20
    for r in recs:
        assert Image.open(out / r["file"]).size == (32, 32)
    assert Image.open(out / "p0000_grid.png").size == (64, 64)  # 3 images in a 2x2 grid
    # Same seed from the library: the same pixels.
    um = UnifiedModel.from_pretrained(model_dir)
    lib = um.generate_images(["a blue square"], num_images=3, cfg_scale=2.5, temperature=0.9, top_k=20,
                             top_p=0.95, seed=8)
    assert np.array_equal(np.asarray(Image.open(out / "p0001_i00.png")), np.asarray(lib.images[0][0]))


@pytest.mark.parametrize("args, match", [
    (["--prompt", "  "], "--prompt is empty"),
    (["--prompt", "x", "--temperature", "-0.5"], "temperature"),
    (["--prompt", "x", "--top-p", "0"], "top_p"),
    (["--prompt", "x", "--num-images", "0"], "num-images"),
    (["--prompts", "/no/prompts.txt"], "prompts file not found"),
])
def test_generate_bad_input_one_line_exit_2(model_dir, tmp_path, capsys, args, match):
    code = main(["generate", "--model", str(model_dir), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1


def test_generate_missing_model_file(model_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").unlink()
    code = main(["generate", "--model", str(broken), "--prompt", "x", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no model.safetensors" in err and len(err.strip().splitlines()) == 1
