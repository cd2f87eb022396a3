"""UnifiedModel as a Hugging Face model: one folder, Auto* classes, the usual from_pretrained keywords, hub ids,
and sampling defaults saved with the model that the Python API and the CLI both read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoProcessor, PreTrainedModel

import vqrae
from vqrae.cli.cli import main
from vqrae.unified_model import SamplingConfig, UnifiedConfig, UnifiedModel
from vqrae.unified_model.testing import tiny_unified_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("um")
    model = tiny_unified_model(seed=0)
    model.save_pretrained(folder)
    return model, folder


def _batch(model):
    ids, _ = model.processor.encode_conversation(
        [{"role": "user", "content": "<image>\nwhat colour is the circle?"}, {"role": "assistant", "content": "red"}])
    return torch.tensor([ids]), torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_one_folder_with_sub_configs_and_auto_classes(saved):
    model, folder = saved
    assert isinstance(model, PreTrainedModel)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "vqrae_unified"
    assert cfg["text_config"]["model_type"] == "qwen2" and cfg["vqrae_config"]["model_type"] == "vqrae"
    assert cfg["text_config"]["vocab_size"] == model.llm.get_input_embeddings().weight.shape[0]
    for name in ("model.safetensors", "tokenizer.json", "preprocessor_config.json", "sampling_config.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "llm").exists()  # no nested sub-model folders any more

    assert isinstance(AutoConfig.from_pretrained(folder), UnifiedConfig)
    loaded = AutoModel.from_pretrained(folder)
    assert type(loaded) is UnifiedModel and loaded.processor is not None
    assert isinstance(AutoProcessor.from_pretrained(folder), vqrae.UnifiedProcessor)
    ids, pixels = _batch(model)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pixels).logits
        out = loaded(input_ids=ids, pixel_values=pixels).logits
    assert torch.allclose(ref, out, atol=1e-5)


def test_from_pretrained_takes_dtype_and_device_map(saved):
    _, folder = saved
    bf16 = UnifiedModel.from_pretrained(folder, dtype=torch.bfloat16)
    assert bf16.llm.get_input_embeddings().weight.dtype == torch.bfloat16
    legacy = UnifiedModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
    assert next(legacy.projector.parameters()).dtype == torch.bfloat16
    mapped = UnifiedModel.from_pretrained(folder, device_map="cpu")
    assert mapped.device.type == "cpu" and mapped.processor is not None


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="unified model folder not found"):
        UnifiedModel.from_pretrained(tmp_path / "a" / "b" / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vqrae"}))
    with pytest.raises(ValueError, match="'vqrae' model, not a unified model"):
        UnifiedModel.from_pretrained(tmp_path)
    # a name shaped like a hub id that the (offline) hub cannot give
    with pytest.raises(OSError, match="neither a local folder nor a model the Hugging Face hub"):
        vqrae.load_vqrae("nobody-here/no-such-tokenizer")
    with pytest.raises(OSError, match="neither a local folder"):
        UnifiedModel.from_pretrained("nobody-here/no-such-model")


def _fake_hub_entry(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay `folder` out as the hub cache does for `repo_id` (what a download leaves on disk)."""
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, entry / "snapshots" / commit)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)


def test_hub_ids_load_from_the_hub_cache(saved, tmp_path):
    model, folder = saved
    cache = tmp_path / "hub"
    _fake_hub_entry(cache, "vqrae-test/tiny-unified", folder)
    model.vqrae.save_pretrained(tmp_path / "tok")
    _fake_hub_entry(cache, "vqrae-test/tiny-tokenizer", tmp_path / "tok")
    code = """
import json, torch, vqrae
from transformers import AutoModel, AutoProcessor
um = vqrae.UnifiedModel.from_pretrained("vqrae-test/tiny-unified")
auto = AutoModel.from_pretrained("vqrae-test/tiny-unified")
proc = AutoProcessor.from_pretrained("vqrae-test/tiny-unified")
vq = vqrae.load_vqrae("vqrae-test/tiny-tokenizer")
print(json.dumps({"um": type(um).__name__, "auto": type(auto).__name__, "proc": type(proc).__name__,
                  "vq": type(vq).__name__, "cfg": um.sampling_config.cfg_scale,
                  "sum": float(sum(p.double().sum() for p in um.parameters()))}))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["um"] == out["auto"] == "UnifiedModel" and out["proc"] == "UnifiedProcessor" and out["vq"] == "VQRAE"
    expected = float(sum(p.detach().double().sum() for p in model.parameters()))
    assert abs(out["sum"] - expected) < 1e-6 * max(1.0, abs(expected))


def test_sampling_defaults_are_saved_and_read_by_api_and_cli(tmp_path, capsys):
    model = tiny_unified_model(seed=1)
    model.sampling_config = SamplingConfig(cfg_scale=2.5, temperature=0.7, top_k=5, num_images=2,
                                           image_tokens=model.config.num_image_tokens)
    model.save_pretrained(tmp_path / "um")
    assert json.loads((tmp_path / "um" / "sampling_config.json").read_text())["cfg_scale"] == 2.5
    loaded = UnifiedModel.from_pretrained(tmp_path / "um")
    assert loaded.sampling_config == model.sampling_config
    out = loaded.generate_images("a red circle", seed=0)
    assert out.settings["cfg_scale"] == 2.5 and out.settings["top_k"] == 5 and out.codes.shape[1] == 2
    out = loaded.generate_images("a red circle", seed=0, cfg_scale=1.5, guidance=True, num_images=1)
    assert out.settings["cfg_scale"] == 1.5 and out.codes.shape[1] == 1
    assert loaded.generate_images("a red circle", seed=0, guidance=False).settings["cfg_scale"] is None

    assert main(["generate", "--model", str(tmp_path / "um"), "--prompt", "a red circle", "--out",
                 str(tmp_path / "gen")]) == 0
    recs = [json.loads(line) for line in (tmp_path / "gen" / "generations.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and {r["cfg_scale"] for r in recs} == {2.5} and {r["temperature"] for r in recs} == {0.7}
    assert main(["generate", "--model", str(tmp_path / "um"), "--prompt", "a red circle", "--cfg-scale", "3",
                 "--num-images", "1", "--out", str(tmp_path / "gen2")]) == 0
    rec = json.loads((tmp_path / "gen2" / "generations.jsonl").read_text().splitlines()[0])
    assert rec["cfg_scale"] == 3.0 and rec["temperature"] == 0.7
    capsys.readouterr()

    (tmp_path / "um" / "sampling_config.json").write_text(json.dumps({"cfg_scale": 2.0, "bogus": 1}))
    with pytest.raises(ValueError, match="unknown key"):
        UnifiedModel.from_pretrained(tmp_path / "um")
    (tmp_path / "um" / "sampling_config.json").write_text(json.dumps({"top_p": 0.0}))
    with pytest.raises(ValueError, match="top_p"):
        UnifiedModel.from_pretrained(tmp_path / "um")
