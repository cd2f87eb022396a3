"""Catch only what you mean: bad input is one line and exit 2 (CLI) or a skipped record (collator); a bug is a
traceback and exit 1, or an exception that propagates."""

from __future__ import annotations

import json
import sys
import types

import pytest

from vqrae.cli import CLIError, cli
from vqrae.data.images import UnreadableImage, load_image
from vqrae.data.records import InvalidRecord, parse_records


@pytest.fixture
def fake_command(monkeypatch):
    """`vqrae fake` raising whatever the test sets in `raise_[0]` (the only registered subcommand)."""
    raise_: list[BaseException | None] = [None]

    def run(args):
        if raise_[0] is not None:
            raise raise_[0]
        return 0

    mod = types.ModuleType("vqrae.cli._fake")
    mod.register = lambda sub: sub.add_parser("fake").set_defaults(func=run)
    monkeypatch.setitem(sys.modules, "vqrae.cli._fake", mod)
    monkeypatch.setattr(cli, "COMMANDS", ["_fake"])
    monkeypatch.delenv("VQRAE_DEBUG", raising=False)
    return raise_


@pytest.mark.parametrize("exc", [ValueError("bad value\nsecond line"), CLIError("bad flag"),
                                 FileNotFoundError("no such file: x.png"), InvalidRecord("record 3: no caption"),
                                 UnreadableImage("corrupt or truncated image: x.png")])
def test_bad_input_is_one_line_and_exit_2(fake_command, capsys, exc):
    fake_command[0] = exc
    assert cli.main(["fake"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vqrae fake: error: {str(exc).splitlines()[0]}"]


@pytest.mark.parametrize("exc", [KeyError("caption"), TypeError("unsupported operand"), AttributeError("no attr"),
                                 RuntimeError("mat1 and mat2 shapes cannot be multiplied"), IndexError("out of range")])
def test_a_bug_prints_its_traceback_and_exits_1(fake_command, capsys, exc):
    fake_command[0] = exc
    assert cli.main(["fake"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and f"{type(exc).__name__}: " in err
    assert "in run" in err  # the frame that raised is shown
    assert "bug" in err.strip().splitlines()[-1]


def test_debug_reraises_and_success_is_0(fake_command, monkeypatch):
    assert cli.main(["fake"]) == 0
    monkeypatch.setenv("VQRAE_DEBUG", "1")
    fake_command[0] = ValueError("bad value")
    with pytest.raises(ValueError, match="bad value"):
        cli.main(["fake"])
    fake_command[0] = KeyError("k")
    with pytest.raises(KeyError):
        cli.main(["fake"])


def test_record_and_image_errors_are_typed(tmp_path):
    with pytest.raises(InvalidRecord, match="record 1: 'caption' must be a non-empty string"):
        parse_records([{"image": "a.png", "caption": "ok"}, {"image": "b.png", "caption": " "}], "f.jsonl", "caption")
    with pytest.raises(InvalidRecord, match="unknown role"):
        parse_records([{"conversations": [{"from": ["human"], "value": "hi"}, {"from": "gpt", "value": "yo"}]}],
                      "f.json", "conversation")
    with pytest.raises(InvalidRecord, match="unknown role 'system'"):  # the table knows it, LLaVA records don't
        parse_records([{"conversations": [{"from": "system", "value": "hi"}, {"from": "gpt", "value": "yo"}]}],
                      "f.json", "conversation")
    ok = parse_records([{"conversations": [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "yo"}]}],
                       "f.json", "conversation")
    assert [t["from"] for t in ok[0]["conversations"]] == ["human", "gpt"]  # aliases normalised to LLaVA's names
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(UnreadableImage, match="bad.png"):
        load_image(bad)
    assert issubclass(InvalidRecord, ValueError) and issubclass(UnreadableImage, ValueError)


def test_tar_json_that_is_not_an_object_is_an_invalid_record(tmp_path):
    import io
    import tarfile

    from PIL import Image

    from vqrae.data.readers import caption_dataset

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, data in (("k.png", buf.getvalue()), ("k.json", json.dumps(["a list"]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InvalidRecord, match="JSON object"):
        caption_dataset(tmp_path / "s.tar", size=4)


def test_a_bug_while_reading_an_image_is_not_skipped(tmp_path, monkeypatch):
    """The readers skip missing and undecodable images, but not an exception from a bug."""
    from PIL import Image

    from vqrae.data import readers

    for i in range(2):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.png")
    (tmp_path / "2.png").write_bytes(b"junk")
    ds = readers.image_dataset(tmp_path, size=4)
    assert ds[2]["skipped"] == 1  # the junk file is skipped (its neighbour is returned)

    def buggy(src, name=None):
        raise KeyError("a bug")

    monkeypatch.setattr(readers, "load_image", buggy)
    with pytest.raises(KeyError):
        ds[0]


def test_overrides_on_both_sides_of_an_option_are_all_kept():
    """`vqrae ablate quantizer a=1 --config C b=2` used to fail with "unrecognized arguments: b=2"."""
    parser = cli.build_parser()
    args = cli.parse_args(parser, ["ablate", "quantizer", "max_steps=2", "--config", "c.yaml", "data_num=8", "lr=1"])
    assert args.overrides == ["max_steps=2", "data_num=8", "lr=1"]
    args = cli.parse_args(parser, ["scale", "--config", "c.yaml", "--out", "o", "a=1", "--only", "s", "b=2"])
    assert args.overrides == ["a=1", "b=2"]
    with pytest.raises(SystemExit):  # a stray word that is no override is still an error
        cli.parse_args(parser, ["ablate", "quantizer", "--config", "c.yaml", "a=1", "--bogus"])
    with pytest.raises(SystemExit):  # a command without overrides takes none
        cli.parse_args(parser, ["data", "shapes", "--out", "x", "a=1"])
