"""The README's Python examples run as written.

They name real hub models (google/siglip2-so400m-patch16-256, Qwen/Qwen2.5-0.5B-Instruct). Our machines have no
network, so the test lays tiny random stand-ins out in a Hugging Face hub cache under those names (exactly what a
download leaves on disk) and runs every ```python block of README.md, in order, in one fresh process with
HF_HUB_OFFLINE=1 and that cache: the hub-id loading paths are exercised for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image
from tokenizers import AddedToken
from transformers import SiglipVisionConfig, SiglipVisionModel

from vqrae.tokenizer.testing import TINY_SIGLIP
from vqrae.unified_model.testing import tiny_llm, tiny_text_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"

# Qwen2.5-Instruct's chat template without its tools branch (it injects a default system prompt).
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role != 'system' or not loop.first %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _cache_entry(cache: Path, repo_id: str) -> Path:
    entry = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "1" * 40
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    return entry / "snapshots" / commit


def test_readme_python_examples_run(tmp_path):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2, "the README lost its Python examples"
    cache = tmp_path / "hub"
    torch.manual_seed(0)
    vision = SiglipVisionModel(SiglipVisionConfig(**{k: v for k, v in TINY_SIGLIP.items() if k != "model_type"}))
    vision.save_pretrained(_cache_entry(cache, "google/siglip2-so400m-patch16-256"))
    tok = tiny_text_tokenizer()
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")],
                   special_tokens=True)
    tok.chat_template = QWEN25_TEMPLATE
    qwen = _cache_entry(cache, "Qwen/Qwen2.5-0.5B-Instruct")
    tiny_llm(len(tok)).save_pretrained(qwen)
    tok.save_pretrained(qwen)
    work = tmp_path / "work"
    work.mkdir()
    Image.new("RGB", (48, 40), (200, 30, 30)).save(work / "photo.png")

    script = work / "readme_examples.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (work / "my-tokenizer" / "model.safetensors").is_file()
    assert (work / "my-unified" / "sampling_config.json").is_file()
    assert Image.open(work / "drawing.png").size == (32, 32)
    shutil.rmtree(work / "my-unified")  # about 100 MB: the README's tokenizer is paper-sized (K=16384, e=1536)
