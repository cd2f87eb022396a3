"""Training configs (YAML + key=value overrides, type checks, one-line errors) and lr schedules."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from vqrae.train.config import TrainConfig, config_to_dict, load_config, save_config
from vqrae.train.schedules import build_scheduler, lr_factor


@dataclass
class DecoderSection:
    depth: int = 2
    width: int = 64
    norm: str | None = "layer"


@dataclass
class MyStageConfig(TrainConfig):
    encoder_lr: float = 1e-5
    use_gan: bool = False
    gan_start: int | None = None
    dims: list[int] = field(default_factory=lambda: [16, 32])
    decoder: DecoderSection = field(default_factory=DecoderSection)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_fill_typed_fields(tmp_path):
    path = write(tmp_path, "lr: 1e-4\nmax_steps: 50\nschedule: constant\nadam_betas: [0.9, 0.95]\n"
                           "decoder:\n  depth: 4\n")
    cfg = load_config(MyStageConfig, path, ["encoder_lr=2e-6", "use_gan=true", "gan_start=100", "dims=8,24",
                                            "decoder.width=96", "decoder.norm=null", "deepspeed=zero2"])
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)  # PyYAML reads 1e-4 as a string: converted
    assert cfg.max_steps == 50 and cfg.schedule == "constant" and cfg.adam_betas == (0.9, 0.95)
    assert cfg.encoder_lr == 2e-6 and cfg.use_gan is True and cfg.gan_start == 100 and cfg.dims == [8, 24]
    assert cfg.decoder == DecoderSection(depth=4, width=96, norm=None)
    assert cfg.deepspeed == "zero2"
    assert cfg.warmup_steps == TrainConfig.warmup_steps  # untouched keys keep their defaults


def test_saved_config_loads_back_equal(tmp_path):
    cfg = load_config(MyStageConfig, None, ["lr=3e-4", "decoder.depth=6", "adam_betas=[0.8,0.9]"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(MyStageConfig, tmp_path / "c.yaml")
    assert again == cfg
    assert config_to_dict(again)["adam_betas"] == [0.8, 0.9]


@pytest.mark.parametrize("yaml_text, overrides, message", [
    ("lrr: 0.1\n", [], r"unknown config key 'lrr' in .*cfg\.yaml \(did you mean 'lr'\?\)"),
    ("decoder:\n  dept: 3\n", [], r"unknown config key 'decoder\.dept'.*did you mean 'decoder\.depth'"),
    ("", ["max_step=3"], r"unknown config key 'max_step' in override 'max_step=3'.*'max_steps'"),
    ("", ["decoder.heads=3"], r"unknown config key 'decoder\.heads'"),
    ("", ["lr=fast"], r"config key 'lr' in override 'lr=fast': expected float, got 'fast'"),
    ("max_steps: 2.5\n", [], r"config key 'max_steps' in .*cfg\.yaml: expected int, got 2\.5"),
    ("", ["use_gan=maybe"], r"config key 'use_gan'.*expected bool"),
    ("", ["schedule=linear"], r"config key 'schedule'.*expected one of 'cosine', 'constant', got 'linear'"),
    ("", ["adam_betas=0.9"], r"config key 'adam_betas'.*\(1 items, need 2\)"),
    ("", ["decoder=3"], r"'decoder' is a section; set its keys as decoder\.KEY=VALUE"),
    ("", ["lr"], r"override 'lr' is not of the form key=value"),
    ("decoder: 3\n", [], r"config key 'decoder' in .*: expected a mapping"),
    ("", ["max_steps=0"], r"config key 'max_steps': must be > 0, got 0"),
    ("", ["min_lr_ratio=2"], r"config key 'min_lr_ratio': must be in \[0, 1\]"),
    ("- a\n- b\n", [], r"expected a mapping of keys to values, got list"),
    ("lr: [\n", [], r"is not valid YAML"),
])
def test_bad_config_is_a_one_line_error_naming_the_key(tmp_path, yaml_text, overrides, message):
    path = write(tmp_path, yaml_text)
    with pytest.raises(ValueError, match=message) as info:
        load_config(MyStageConfig, path, overrides)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found: .*nope.yaml"):
        load_config(MyStageConfig, tmp_path / "nope.yaml")


def test_cosine_schedule_warms_up_then_decays_to_min():
    f = [lr_factor(s, "cosine", warmup_steps=4, total_steps=20, min_lr_ratio=0.1) for s in range(20)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[4:]))  # monotone decay after warmup
    assert f[12] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert lr_factor(20, "cosine", 4, 20, 0.1) == pytest.approx(0.1)
    assert [lr_factor(s, "constant", 2, 20) for s in (0, 1, 2, 19)] == [0.5, 1.0, 1.0, 1.0]


def test_scheduler_keeps_group_ratios_and_rejects_unknown_names():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-5}])
    sched = build_scheduler(opt, "cosine", warmup_steps=2, total_steps=10)
    for _ in range(5):
        assert opt.param_groups[0]["lr"] / opt.param_groups[1]["lr"] == pytest.approx(100)
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        build_scheduler(opt, "step", 0, 10)


def test_base_config_is_read_first_and_overlaid(tmp_path):
    (tmp_path / "parent.yaml").write_text("lr: 1e-3\nmax_steps: 50\ndims: [1, 2]\ndecoder: {depth: 4, width: 32}\n")
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("base: ../parent.yaml\nmax_steps: 7\ndims: [3]\ndecoder: {width: 16}\n")
    cfg = load_config(MyStageConfig, child, ["lr=2e-3"])
    # scalars and lists replaced, mappings merged key by key, overrides last
    assert (cfg.lr, cfg.max_steps, cfg.dims) == (2e-3, 7, [3])
    assert (cfg.decoder.depth, cfg.decoder.width) == (4, 16)


def test_base_config_errors_name_the_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match=r"a\.yaml.*cycle|b\.yaml.*cycle"):
        load_config(MyStageConfig, a)
    a.write_text("base: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(MyStageConfig, a)
    a.write_text("base: [1]\n")
    with pytest.raises(ValueError, match="'base' must name another config file"):
        load_config(MyStageConfig, a)


def test_shipped_p4_profile_is_shapes_tiny_with_4px_patches():
    from vqrae.train.stages import get_stage

    def load(profile, stage, overrides=()):
        return load_config(get_stage(stage).config_class, f"{profile}/{stage}", list(overrides))

    tiny, p4 = load("shapes-tiny", "encoder-pretrain"), load("shapes-tiny-p4", "encoder-pretrain")
    assert (tiny.patch_size, p4.patch_size) == (8, 4) and p4.width == tiny.width
    # issue 12: p4's stage 0 trains the dense objectives, longer, so that each patch feature holds its object's shape
    assert (tiny.dense_shape_weight, p4.dense_shape_weight) == (0.0, 3.0) and p4.max_steps == 2 * tiny.max_steps
    s1 = load("shapes-tiny-p4", "tokenizer-stage1")
    assert s1.encoder == "runs/shapes-tiny-p4/encoder/final" and s1.output_dir.startswith("runs/shapes-tiny-p4/")
    # issue 11: the p4 profile's codes are placed by a pixel head, 2,048 of them (shapes-tiny keeps SimVQ, 512)
    assert (s1.model.quantizer, s1.model.codebook_size) == ("patch-kmeans", 2048)
    assert load("shapes-tiny", "tokenizer-stage1").model.quantizer is None  # VQRAEConfig's default: simvq
    sft = load("shapes-tiny-p4", "unified-sft", ["init=x"])
    # an image is read in 64 positions (2x2-merged features, set when alignment builds the model) and drawn in 256
    # codes: a drawing after two questions about an image fits
    assert load("shapes-tiny-p4", "unified-align", ["llm=x", "vqrae=y"]).feature_merge == 2
    assert load("shapes-tiny", "unified-align", ["llm=x", "vqrae=y"]).feature_merge == 1
    assert sft.max_length >= 64 + 256 + 128 and sft.data == load("shapes-tiny", "unified-sft", ["init=x"]).data
    # issue 12: p4's stand-in LM learns to read its context (a scene caption before each conversation, replies
    # scored, one conversation per block, the lower lr at which the lookup forms); alignment reads conversations too
    lm, tiny_lm = load("shapes-tiny-p4", "lm-pretrain"), load("shapes-tiny", "lm-pretrain")
    assert (lm.scene_context, lm.loss_on, tiny_lm.scene_context, tiny_lm.loss_on) == ("caption", "answers", "none",
                                                                                      "all")
    assert lm.max_length >= 320 and lm.lr < tiny_lm.lr
    # a quarter the width, three times the steps of 400 (the lookups form with steps), documents masked apart
    assert (lm.hidden_size, tiny_lm.hidden_size) == (128, 256) and lm.max_steps >= 1000 and lm.document_mask
    assert (lm.turns_per_document, tiny_lm.turns_per_document) == (1, 0)  # one question per document after the scene
    align = load("shapes-tiny-p4", "unified-align", ["llm=x", "vqrae=y"])
    assert {s.task for s in align.sources} == {"describe", "conversation"} and align.max_length >= 64 + 250
    assert sft.lr < load("shapes-tiny", "unified-sft", ["init=x"]).lr
