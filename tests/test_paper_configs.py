"""The paper-scale configs (configs/paper/): each loads with its stage's config class, states the paper's recipe, and
builds on the meta device (eval/model_size.py) into a model of the published size, without downloading anything."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from vqrae.eval.model_size import (
    HUB_ENCODERS,
    HUB_LLMS,
    build_on_meta,
    format_report,
    measure,
    model_size,
    zero_memory,
)
from vqrae.train import load_config
from vqrae.train.config import CONFIG_DIR
from vqrae.train.stages import get_stage

PAPER = CONFIG_DIR / "paper"
STAGES = ["tokenizer-stage1", "tokenizer-stage2", "unified-align", "unified-sft", "unified-gen"]
GPUS = 8


def load(name: str):
    return load_config(get_stage(name).config_class, PAPER / f"{name}.yaml")


def global_batch(cfg, gpus: int = GPUS) -> int:
    return cfg.batch_size * cfg.grad_accum * gpus


# ------------------------------------------------------------------------------------------------ formulas
# Written from the architectures' definitions, independently of the code that builds the models.


def decoder_lm_params(h, layers, heads, kv, inter, vocab, tied, head_dim=None, qkv_bias=False, qk_norm=False):
    """Llama / Qwen2 / Qwen3 decoder: attention (+ q/k/v biases, + per-head q/k RMSNorm), SwiGLU MLP, two RMSNorms
    per layer, a final RMSNorm, token embeddings (+ an untied head)."""
    d = head_dim or h // heads
    attn = 2 * h * heads * d + 2 * h * kv * d
    attn += (heads * d + 2 * kv * d) if qkv_bias else 0
    attn += 2 * d if qk_norm else 0
    return layers * (attn + 3 * h * inter + 2 * h) + h + vocab * h * (1 if tied else 2)


def siglip_vision_params(h, layers, inter, patch, image):
    """SigLIP vision tower without its pooling head: patch conv, learned positions, pre-LN blocks, final LN."""
    block = 4 * (h * h + h) + (h * inter + inter) + (inter * h + h) + 4 * h
    return 3 * patch * patch * h + h + (image // patch) ** 2 * h + layers * block + 2 * h


def mlp2x_gelu_params(d, h):
    return d * h + h + h * h + h


# ------------------------------------------------------------------------------------------------ the configs


def test_the_paper_folder_holds_one_config_per_stage_and_ships_with_the_package():
    assert sorted(p.stem for p in PAPER.glob("*.yaml")) == sorted([*STAGES, "scaling"])  # + the scaling sweep
    pyproject = (CONFIG_DIR.parent / "pyproject.toml").read_text()
    assert re.search(r'"vqrae\.configs"\s*=\s*\[\s*"\*/\*\.yaml"\s*\]', pyproject)  # configs/paper/*.yaml included


@pytest.mark.parametrize("name", STAGES)
def test_each_config_loads_with_its_stage_class_and_documents_its_launch(name):
    cfg = load(name)
    assert type(cfg) is get_stage(name).config_class
    assert cfg.precision == "bf16"
    text = (PAPER / f"{name}.yaml").read_text()
    header = text[: text.index("\noutput_dir:")]
    assert all(line.startswith("#") for line in header.splitlines())
    for launcher in ("deepspeed --no_local_rank --num_gpus 8", "torchrun --standalone --nproc_per_node 8",
                     "torchrun --nnodes 4 --node_rank $RANK --master_addr $ADDR"):
        assert launcher in header, (name, launcher)
    assert f"$(which vqrae) train {name} --config paper/{name}" in header
    assert yaml.safe_load(text)["output_dir"] == f"runs/paper/{name}"


def test_tokenizer_configs_follow_the_paper():
    s1, s2 = load("tokenizer-stage1"), load("tokenizer-stage2")
    assert s1.encoder == "google/siglip2-so400m-patch16-256" and s1.encoder_type == "siglip"
    assert (s1.model.codebook_size, s1.model.codebook_dim) == (16384, 1536)
    assert s2.tokenizer == f"{s1.output_dir}/final"  # stage 2 continues from stage 1
    for cfg, steps in ((s1, 100_000), (s2, 70_000)):
        assert cfg.max_steps == steps and global_batch(cfg) == 1024 and cfg.deepspeed == "zero2"
        assert cfg.warmup_steps == 2000 and cfg.schedule == "cosine" and cfg.adam_betas == (0.9, 0.999)
        assert cfg.weight_decay == pytest.approx(1e-4) and cfg.grad_clip == pytest.approx(1.0)
        assert cfg.perceptual_weight == pytest.approx(1.1) and cfg.gan_weight == pytest.approx(0.1)
        assert cfg.disc_lr == pytest.approx(4e-5)
    assert s2.encoder_lr == pytest.approx(1e-5) and s2.distill_weight == pytest.approx(1.0)


def test_unified_configs_follow_llava_and_the_paper_generator():
    align, sft, gen = load("unified-align"), load("unified-sft"), load("unified-gen")
    assert align.llm in HUB_LLMS and align.vqrae == "runs/paper/tokenizer-stage2/final"
    assert (align.lr, global_batch(align), align.deepspeed) == (pytest.approx(1e-3), 256, "zero2")
    assert align.max_steps * 256 <= 558_128 < (align.max_steps + 1) * 256  # one epoch of LCS-558K
    assert sft.init == f"{align.output_dir}/final" and not sft.llm
    assert (sft.lr, global_batch(sft), sft.deepspeed) == (pytest.approx(2e-5), 128, "zero3")
    assert sft.max_steps * 128 <= 665_298 < (sft.max_steps + 1) * 128  # one epoch of llava_v1_5_mix665k
    for cfg in (align, sft):
        assert cfg.gradient_checkpointing and cfg.max_length == 2048
        assert all(s.task == "conversation" for s in cfg.sources)
    assert "blip_laion_cc_sbu_558k.json" in align.sources[0].data
    assert sft.sources[0].data.endswith("llava_v1_5_mix665k.json")
    assert gen.llm == "Qwen/Qwen3-0.6B" and gen.vqrae == align.vqrae
    assert (gen.lr, global_batch(gen), gen.schedule, gen.warmup_steps) == (pytest.approx(1e-4), 512, "constant", 4000)
    assert gen.adam_eps == pytest.approx(1e-15) and gen.caption_dropout == pytest.approx(0.1)
    assert gen.max_length == 1536 and gen.text_weight == 0 and [s.task for s in gen.sources] == ["t2i"]
    assert gen.attn_implementation == "auto" and gen.template == "chatml"  # Qwen3's own template cannot be split


# ------------------------------------------------------------------------------------------- the meta models


@pytest.fixture(scope="module")
def built():
    return {name: build_on_meta(f"paper/{name}") for name in STAGES}


@pytest.fixture(scope="module")
def sizes(built):
    return {name: measure(b) for name, b in built.items()}


@pytest.mark.parametrize("name", STAGES)
def test_models_build_on_meta_with_no_storage(built, name):
    module = built[name].module
    tensors = [*module.parameters(), *module.buffers()]
    assert tensors and all(t.device.type == "meta" for t in tensors)
    assert built[name].stage == name


def test_the_so400m_encoder_and_its_mirrored_decoder(sizes):
    enc = HUB_ENCODERS["google/siglip2-so400m-patch16-256"]
    want = siglip_vision_params(enc["hidden_size"], enc["num_hidden_layers"], enc["intermediate_size"],
                                enc["patch_size"], enc["image_size"])
    for name in STAGES:  # the same tokenizer under every stage
        f = sizes[name].facts
        assert abs(f["encoder_params"] - want) / want < 0.01
        assert 380e6 < f["encoder_params"] < 430e6  # "so400m"
        assert (f["encoder_layers"], f["encoder_width"], f["image_tokens"]) == (27, 1152, 256)
        assert (f["decoder_layers"], f["decoder_width"]) == (27, 1152)
        assert (f["codebook_size"], f["codebook_dim"]) == (16384, 1536)


def test_tokenizer_stages_train_what_the_paper_trains(sizes):
    s1, s2 = ({p.name: p for p in sizes[n].parts} for n in ("tokenizer-stage1", "tokenizer-stage2"))
    assert s1["vq.encoder"].trainable == 0 and s1["vq.decoder"].trainable == s1["vq.decoder"].params
    assert "teacher" not in s1
    assert s2["vq.encoder"].trainable == s2["vq.encoder"].params  # unfrozen in stage 2
    assert s2["teacher"].trainable == 0 and s2["teacher"].params == s2["vq.encoder"].params
    assert s1["perceptual"].trainable == 0 and 14e6 < s1["perceptual"].params < 15e6  # LPIPS-VGG16, frozen
    assert sizes["tokenizer-stage2"].trainable - sizes["tokenizer-stage1"].trainable == s2["vq.encoder"].params


def test_qwen3_generator_has_the_published_size(sizes):
    size, arch = sizes["unified-gen"], HUB_LLMS["Qwen/Qwen3-0.6B"].config
    f = size.facts
    assert (f["llm_layers"], f["llm_hidden"], f["llm_heads"], f["llm_kv_heads"]) == (28, 1024, 16, 8)
    assert f["tied_embeddings"] and f["code_offset"] == arch["vocab_size"] == 151936  # Qwen's padded table
    assert f["vocab_size"] == 151936 + 16384
    want = decoder_lm_params(1024, 28, 16, 8, 3072, f["vocab_size"], tied=True, head_dim=128, qk_norm=True)
    assert abs(f["llm_params"] - want) / want < 0.01
    base = f["llm_params"] - 16384 * 1024  # without the code rows: the model card's 0.6B, 0.44B non-embedding
    assert 0.58e9 < base < 0.62e9 and 0.43e9 < base - 151936 * 1024 < 0.45e9
    assert size.embedding == f["vocab_size"] * 1024  # one tied table
    assert size.trainable == f["llm_params"]  # text-to-image trains the LLM only


def test_vicuna_understanding_runs_have_the_published_size(sizes):
    align, sft = sizes["unified-align"], sizes["unified-sft"]
    f = align.facts
    assert (f["llm_type"], f["llm_layers"], f["llm_hidden"], f["llm_kv_heads"]) == ("llama", 32, 4096, 32)
    assert f["vocab_size"] == 32000 + 4 + 16384  # <image> <boi> <eoi> <uncond> + the codes
    want = decoder_lm_params(4096, 32, 32, 32, 11008, f["vocab_size"], tied=False)
    assert abs(f["llm_params"] - want) / want < 0.01
    base = f["llm_params"] - (4 + 16384) * 4096 * 2
    assert abs(base - 6.74e9) / 6.74e9 < 0.01  # Llama-2-7B
    projector = mlp2x_gelu_params(1152, 4096)
    assert align.trainable == projector  # align: the projector only
    assert sft.trainable == projector + f["llm_params"]  # sft: projector + LLM
    assert sft.facts == align.facts  # sft continues from the aligned model
    # The base Llama-2 tokenizer has no pad token: the extension adds <pad> too.
    llama = model_size("paper/unified-align", overrides=["llm=meta-llama/Llama-2-7b-hf"])
    assert llama.facts["vocab_size"] == 32000 + 5 + 16384


def test_qwen25_7b_table_entry_has_the_published_size():
    arch = HUB_LLMS["Qwen/Qwen2.5-7B-Instruct"].config
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**arch))
    got = sum(p.numel() for p in llm.parameters())
    want = decoder_lm_params(3584, 28, 28, 4, 18944, 152064, tied=False, qkv_bias=True)
    assert abs(got - want) / want < 0.01 and abs(got - 7.61e9) / 7.61e9 < 0.01  # model card: 7.61B


def test_zero_memory_formulas():
    p, t, n = 1_000_000, 400_000, 8
    m = zero_memory(p, t, 0, n)
    assert m["zero0"]["total"] == pytest.approx(2 * p + 14 * t)
    assert m["zero1"]["total"] == pytest.approx(2 * p + 2 * t + 12 * t / n)
    assert m["zero2"]["total"] == pytest.approx(2 * p + 14 * t / n)
    assert m["zero3"]["total"] == pytest.approx((2 * p + 14 * t) / n)
    assert zero_memory(p, p, 0, n)["zero3"]["total"] == pytest.approx(16 * p / n)  # everything trains
    assert m["zero3"]["total"] < m["zero2"]["total"] < m["zero1"]["total"] < m["zero0"]["total"]
    with pytest.raises(ValueError, match="gpus"):
        zero_memory(p, t, 0, 0)


def test_paper_runs_fit_an_80gb_gpu_before_activations(sizes):
    for name, size in sizes.items():
        row = size.memory(GPUS)[size.deepspeed]
        assert row["total"] < 80 * 2**30 * 0.5, name  # room left for activations
    sft = sizes["unified-sft"]
    assert sft.memory(GPUS)["zero0"]["total"] > 80 * 2**30  # why SFT of a 7B LLM needs ZeRO


# --------------------------------------------------------------------------- local folders and the CLI


def test_local_folders_and_unwritten_outputs_resolve_like_training_would(tmp_path):
    """A pipeline of tiny configs: stage 1's output exists, stage 2's is only a config away. The meta model must
    have exactly the parameters of the model `UnifiedModel.from_llm` builds from the same parts."""
    from vqrae.tokenizer import VQRAE
    from vqrae.tokenizer.testing import save_tiny_siglip
    from vqrae.unified_model import UnifiedModel
    from vqrae.unified_model.testing import tiny_llm, tiny_text_tokenizer

    save_tiny_siglip(tmp_path / "enc")
    tok = tiny_text_tokenizer()
    tiny_llm(len(tok)).save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    runs, cfgs = tmp_path / "runs", tmp_path / "cfgs"
    cfgs.mkdir()
    vq = VQRAE.from_encoder("siglip", str(tmp_path / "enc"), codebook_size=64, codebook_dim=48)
    vq.save_pretrained(runs / "tok1" / "final")
    (cfgs / "tokenizer-stage2.yaml").write_text(f"output_dir: {runs}/tok2\ntokenizer: {runs}/tok1/final\n")
    (cfgs / "unified-gen.yaml").write_text(
        f"output_dir: {runs}/gen\nllm: {tmp_path}/llm\nvqrae: {runs}/tok2/final\ntemplate: chatml\n"
        "data: [{task: t2i, data: shapes, num: 8}]\n")
    size = model_size(cfgs / "unified-gen.yaml")
    real = UnifiedModel.from_llm(str(tmp_path / "llm"), vq, template="chatml")  # what the stage builds
    assert size.total == sum(p.numel() for p in real.parameters())
    assert size.facts["vocab_size"] == real.llm.config.vocab_size
    assert size.facts["code_offset"] == real.config.code_offset
    assert size.trainable == sum(p.numel() for p in real.llm.parameters())
    missing = cfgs / "tokenizer-stage1.yaml"
    missing.write_text(f"output_dir: {runs}/x\ntokenizer: {runs}/nowhere/final\n")
    with pytest.raises(FileNotFoundError, match="'tokenizer'.*nowhere"):
        model_size(missing)


def test_cli_prints_counts_and_the_memory_table(capsys):
    from vqrae.cli.cli import main

    assert main(["bench", "model-size", "--config", "paper/unified-gen", "--gpus", "4"]) == 0
    out = capsys.readouterr().out
    assert "qwen3: 28 layers x 1024" in out and "4 processes" in out
    row = next(line for line in out.splitlines() if line.startswith("zero2"))
    assert row.endswith("<- this config")
    assert main(["bench", "model-size", "--config", "paper/unified-gen", "--gpus", "0"]) == 2
    assert main(["bench", "model-size", "--config", "paper/unified-gen", "llm=org/unknown-llm"]) == 2
    assert "built-in LLM architectures" in capsys.readouterr().err


def test_report_names_every_part(sizes):
    text = format_report(sizes["tokenizer-stage2"], gpus=GPUS)
    for part in ("vq.encoder", "vq.decoder", "teacher", "disc", "zero2", "zero3"):
        assert part in text
