"""`vqrae chat` driven through stdin (draw, then discuss the drawing) and `vqrae generate`, with their errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqrae.cli import chat as chat_cli
from vqrae.cli.chat import printable
from vqrae.cli.cli import main
from vqrae.unified_model import UnifiedModel
from vqrae.unified_model.chat import ChatSession
from vqrae.unified_model.generation import decode_codes
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


def _trained(monkeypatch, history):
    """Have `vqrae chat` load the model with this `training_history`."""
    real = chat_cli.load_model

    def load(args):
        model = real(args)
        model.training_history = history
        return model

    monkeypatch.setattr(chat_cli, "load_model", load)


CONVERSATION_TRAINED = [{"stage": "unified-sft", "steps": 300, "tasks": ["conversation", "t2i", "describe"]}]


def test_chat_draw_then_ask_about_the_drawing(model_dir, photo, tmp_path, monkeypatch, capsys):
    seen = []  # every embedding call, to check what the model was shown
    real_embed = UnifiedModel.embed

    def spy(self, input_ids, pixel_values=None, image_features=None):
        seen.append((input_ids.clone(), None if pixel_values is None else pixel_values.clone()))
        return real_embed(self, input_ids, pixel_values, image_features)

    monkeypatch.setattr(UnifiedModel, "embed", spy)
    _trained(monkeypatch, CONVERSATION_TRAINED)
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
    assert "empty prompt" in err and "warning" not in err
    transcript = json.loads((tmp_path / "t.json").read_text())
    roles = [m["role"] for m in transcript["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert transcript["messages"][0]["content"] == "Generate an image of: a red circle on the left"
    assert transcript["messages"][1]["content"] == "<boi>"  # the drawing, as its codes (not an <image>)
    assert transcript["messages"][4]["content"].startswith("<image>\n")
    assert transcript["images"] == [str(photo)]
    [drawing] = transcript["drawings"]
    model = UnifiedModel.from_pretrained(model_dir)
    cfg = model.config
    codes = torch.tensor(drawing["codes"])
    assert drawing["file"] == str(drawn) and codes.shape == tuple(cfg.grid_size)
    assert np.array_equal(np.asarray(Image.open(drawn)), np.asarray(decode_codes(model, codes[None])[0]))
    # The question about the drawing was answered with the drawing's codes in the prompt, after <boi>, and no
    # image features; the next question also saw the photo's features.
    drawing_ids = [cfg.boi_token_id, *(codes.flatten() + cfg.code_offset).tolist(), cfg.eoi_token_id]
    text_calls = [(ids[0].tolist(), px) for ids, px in seen if int(ids[0, -1]) != cfg.boi_token_id]
    ids, px = text_calls[0]
    assert px is None and cfg.image_token_id not in ids and _contains(ids, drawing_ids)
    ids, px = text_calls[1]
    assert ids.count(cfg.image_token_id) == cfg.num_image_features and _contains(ids, drawing_ids)
    assert px.shape[0] == 1 and torch.allclose(px[0], model.processor.image_tensor(str(photo)))
    # after /reset, "hello" was asked without images or drawings
    assert seen[-1][1] is None and cfg.boi_token_id not in seen[-1][0].tolist()


def _contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i : i + len(part)] == part for i in range(len(ids)))


def test_chat_attaches_image_from_command_line(model_dir, photo, tmp_path, monkeypatch, capsys):
    _trained(monkeypatch, CONVERSATION_TRAINED)
    code, _out, err = _chat(monkeypatch, capsys, ["--model", str(model_dir), "--image", str(photo),
                                                 "--max-new-tokens", "3"], ["what is this?",
                                                                            f"/save {tmp_path / 's.json'}"])
    assert code == 0 and err == ""
    t = json.loads((tmp_path / "s.json").read_text())
    assert t["images"] == [str(photo)] and t["messages"][0]["content"].startswith("<image>\n")


@pytest.mark.parametrize("history, expected", [
    (None, "no training history"),
    ([], "no training history"),
    ([{"stage": "unified-align", "steps": 50, "tasks": ["describe"]},
      {"stage": "unified-gen", "steps": 300, "tasks": ["t2i"]}], "unified-align: describe; unified-gen: t2i"),
    (CONVERSATION_TRAINED, None),
])
def test_chat_warns_about_a_model_never_trained_on_conversations(model_dir, monkeypatch, capsys, history, expected):
    _trained(monkeypatch, history)
    code, _out, err = _chat(monkeypatch, capsys, ["--model", str(model_dir), "--max-new-tokens", "2"], ["hi"])
    assert code == 0
    if expected is None:
        assert err == ""
    else:
        [line] = err.strip().splitlines()  # one line, at start
        assert "warning: this model was never trained on conversations" in line and expected in line


def test_chat_prints_control_characters_escaped(model_dir, monkeypatch, capsys):
    assert printable("ok\x1b[31mred\r\x07\x7f\x9b\u202eevil\n\tnext") == \
        "ok\\x1b[31mred\\x0d\\x07\\x7f\\x9b\\u202eevil\n\tnext"
    assert printable("plain text, ünïcödé, 画 \u200b") == "plain text, ünïcödé, 画 \u200b"

    def ask(self, text):  # an untrained model's reply: any bytes
        yield "a\x1b]0;pwned\x07"
        yield "b\rc\n"

    monkeypatch.setattr(ChatSession, "ask", ask)
    code, out, _err = _chat(monkeypatch, capsys, ["--model", str(model_dir)], ["hi"])
    assert code == 0 and "a\\x1b]0;pwned\\x07b\\x0dc\n" in out
    assert not any(ch in out for ch in "\x1b\x07\r")


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
