"""vqrae inside lmms-eval: the model adapter (`vqrae.eval.lmms.model.VQRAELmms`, model name `vqrae`), the
ShapesWorld VQA task (yaml + utils under `tasks/`, loaded through lmms-eval's `include_path`) and its scoring
(`shapes_vqa`), and the in-process runner behind `vqrae eval understanding` (`understanding`).

This module stays light: lmms-eval imports it through the `lmms_eval.models` entry point (`manifest`) while it builds
its model registry, so nothing here imports lmms-eval or torch at module level.
"""

from __future__ import annotations

from pathlib import Path

MODEL_NAME = "vqrae"
MODEL_CLASS_PATH = "vqrae.eval.lmms.model.VQRAELmms"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # lmms-eval include_path of the tasks shipped with vqrae


def manifest():
    """The `lmms_eval.models` entry point: how `lmms-eval --model vqrae` finds the adapter class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS_PATH)


def tasks_dir() -> str:
    """The folder to pass as lmms-eval's `--include_path` for `shapesworld_vqa`."""
    return str(TASKS_DIR)
