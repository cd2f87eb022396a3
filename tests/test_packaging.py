"""The distribution adds one import name, `vqrae`, and works outside the source tree.

Builds the wheel, installs it (without dependencies: the test venv has them) into a fresh folder, and runs it from a
temporary directory with the checkout off `sys.path`: `import vqrae` must come from the installed copy, nothing
generic (`data`, `train`, `eval`, `tokenizer`, `scripts`) may land at the top of site-packages or in `sys.modules`,
and `vqrae --help`, the shipped configs and a smoke quickstart must work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERIC = ("tokenizer", "unified_model", "data", "train", "eval", "scripts", "configs", "tests")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    wheels, target = root / "wheels", root / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True, text=True, timeout=300)
    wheel = next(wheels.glob("vqrae-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    return wheel, target


def _run(target: Path, cwd: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    # -I would also drop the venv's site-packages; instead put only the installed copy first on the path and run
    # from a folder that is not the checkout (python -c puts the cwd, not the checkout, on sys.path).
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "PYTHONSAFEPATH": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_wheel_holds_one_top_level_package_with_its_configs(installed):
    wheel, target = installed
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"vqrae"}
    for needed in ("vqrae/__init__.py", "vqrae/tokenizer/modeling.py", "vqrae/cli/cli.py",
                   "vqrae/configs/shapes-tiny/tokenizer-stage1.yaml", "vqrae/train/ds_configs/zero3.json"):
        assert needed in names, needed
    assert not any(n.startswith("vqrae/tests/") or n.endswith(".sh") and "cli" not in n for n in names)
    # every Python module of the checkout's package folders is in the wheel (pyproject lists packages by hand)
    folders = {"tokenizer": "tokenizer", "unified_model": "unified_model", "data": "data", "train": "train",
               "eval": "eval", "scripts": "cli"}
    for folder, part in folders.items():
        for py in (REPO / folder).rglob("*.py"):
            rel = py.relative_to(REPO / folder)
            if "tasks" in rel.parts:  # lmms-eval task files ship as data, checked below
                continue
            assert f"vqrae/{part}/{rel.as_posix()}" in names, f"{py.relative_to(REPO)} is not in the wheel"
    assert "vqrae/eval/lmms/tasks/shapesworld_vqa/shapesworld_vqa.yaml" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    entries = zipfile.ZipFile(wheel).read(entry).decode()
    assert "vqrae = vqrae.cli:main" in entries
    assert "[lmms_eval.models]" in entries and "vqrae = vqrae.eval.lmms:manifest" in entries
    assert not any((target / g).exists() for g in GENERIC)


def test_installed_copy_imports_alone_and_registers_with_transformers(installed, tmp_path):
    _, target = installed
    # a user's own data.py / train.py beside their script must not shadow ours
    (tmp_path / "data.py").write_text("raise SystemExit('user data.py was imported')\n")
    (tmp_path / "train.py").write_text("raise SystemExit('user train.py was imported')\n")
    code = f"""
import json, sys, importlib, pkgutil
import vqrae
for m in pkgutil.walk_packages(vqrae.__path__, "vqrae."):
    if m.name.endswith("__main__") or m.name.endswith("bench_quantizer"):
        continue
    importlib.import_module(m.name)
from transformers import AutoConfig, AutoModel
print(json.dumps({{
    "file": vqrae.__file__,
    "names": [n for n in ("VQRAE", "UnifiedModel", "UnifiedProcessor", "VQRAEConfig", "UnifiedConfig", "load_vqrae")
              if hasattr(vqrae, n)],
    "generic": sorted(m for m in sys.modules if m.split(".")[0] in {GENERIC!r}),
    "auto": [AutoConfig.for_model("vqrae").__class__.__name__, AutoConfig.for_model("vqrae_unified").__class__.__name__],
}}))
"""
    res = _run(target, tmp_path, "-c", code)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).is_relative_to(target), out["file"]
    assert len(out["names"]) == 6
    assert out["generic"] == []
    assert out["auto"] == ["VQRAEConfig", "UnifiedConfig"]


def test_installed_cli_help_configs_and_smoke_quickstart(installed, tmp_path):
    _, target = installed
    res = _run(target, tmp_path, "-m", "vqrae.cli", "--help")
    assert res.returncode == 0 and "quickstart" in res.stdout, res.stderr[-2000:]
    # the documented config paths resolve to the shipped copies, from a folder with no configs/ in it
    code = ("from vqrae.train.config import resolve_config_path as r; import vqrae;"
            "print(r('configs/shapes-tiny/tokenizer-stage1.yaml')); print(r('shapes-tiny/tokenizer-stage2'))")
    res = _run(target, tmp_path, "-c", code)
    assert res.returncode == 0, res.stderr[-2000:]
    for line in res.stdout.split():
        assert Path(line).is_file() and Path(line).is_relative_to(target)
    res = _run(target, tmp_path, "-m", "vqrae.cli", "quickstart", "--smoke", "--out", str(tmp_path / "qs"),
               timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert (tmp_path / "qs" / "quickstart.json").is_file() and "PSNR:" in res.stdout


def test_missing_config_names_the_shipped_ones():
    from vqrae.train.config import resolve_config_path

    with pytest.raises(FileNotFoundError, match="shapes-tiny/tokenizer-stage1"):
        resolve_config_path("configs/shapes-tiny/nope.yaml")
