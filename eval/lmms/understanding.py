"""`vqrae eval understanding`: lmms-eval's own tasks and metrics, run in process on local copies of the datasets.

Every task reads its data from DATA_ROOT/<task>/: the task's Hugging Face dataset saved with `save_to_disk` as a
`DatasetDict` with the task's columns and its test split (e.g. `load_dataset("lmms-lab-encoder/MME")
.save_to_disk("DATA_ROOT/mme")` on a machine with network). The runner overrides each task's `dataset_path` with
that folder and its `dataset_kwargs` with `load_from_disk: true`; everything else (prompts, generation settings,
metrics, aggregation) is lmms-eval's. A few tasks need more than a new path offline (`LOCAL_OVERRIDES`):
- gqa: lmms-eval joins the questions with images downloaded from the hub in `process_docs`; the local copy must
  already hold the `image` column (questions joined with their images), and that step is skipped;
- mmbench_en_dev: its dev score asks an OpenAI model to match answers; offline the runner scores it with lmms-eval's
  `mmbench_en_dev_static` (same data, regex/substring matching) unless OPENAI_API_KEY is set.
`shapesworld_vqa` is vqrae's own task (shipped in `vqrae/eval/lmms/tasks`); its folder may be the DatasetDict
itself or the output folder of `vqrae data shapes` (which holds it as hf/).

lmms-eval returns (and its CLI exits 0) on some failures, so the runner checks the results it gets back: every
task must have reported its metrics.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vqrae.eval.lmms import TASKS_DIR

logger = logging.getLogger(__name__)

DEFAULT_TASKS = ("mme", "pope", "gqa", "textvqa_val", "mmbench_en_dev", "seedbench", "mmmu_val", "ai2d",
                 "scienceqa_img")
SHAPES_TASK = "shapesworld_vqa"
# task -> (the lmms-eval task that is run, extra config overrides), beyond dataset_path / dataset_kwargs.
LOCAL_OVERRIDES: dict[str, tuple[str, dict]] = {
    "gqa": ("gqa", {"process_docs": None}),
}
OFFLINE_SUBSTITUTES = {"mmbench_en_dev": "mmbench_en_dev_static"}  # unless OPENAI_API_KEY is set


class UnderstandingError(ValueError):
    """Bad input to the understanding suite (a missing data folder, an unknown task): one line for the CLI."""


@dataclass
class UnderstandingResult:
    results: dict  # lmms-eval's results dict (without per-sample logs)
    rows: list[tuple[str, str, float, int]]  # (task, metric, value, documents)
    samples: dict = field(default_factory=dict)  # task -> lmms-eval's logged samples
    seconds: float = 0.0
    questions: int = 0
    files: dict = field(default_factory=dict)

    @property
    def seconds_per_question(self) -> float:
        return self.seconds / self.questions if self.questions else float("nan")

    def metric(self, task: str, name: str) -> float:
        for t, m, v, _ in self.rows:
            if t == task and m == name:
                return v
        raise KeyError(f"{task}/{name} not in the results")


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks)]
    names = [t for t in names if t]
    if not names:
        raise UnderstandingError("--tasks is empty")
    return list(dict.fromkeys(names))


def local_dataset_dir(data_root: str | Path, task: str) -> Path:
    """DATA_ROOT/<task>, the DatasetDict a task reads (or its hf/ sub-folder, as `vqrae data shapes` writes it);
    raises a one-line error naming the folder when it is not there."""
    folder = Path(data_root) / task
    for candidate in (folder, folder / "hf"):
        if (candidate / "dataset_dict.json").is_file():
            return candidate
    if (folder / "dataset_info.json").is_file() or (folder / "state.json").is_file():
        raise UnderstandingError(f"{folder} holds a single Dataset; task {task} needs a DatasetDict there "
                                 f"(DatasetDict({{'<split>': ds}}).save_to_disk('{folder}'))")
    hint = ("`vqrae data shapes --out " + str(folder) + "`" if task == SHAPES_TASK else
            f"the Hugging Face dataset of lmms-eval task {task!r}, saved with save_to_disk as a DatasetDict")
    raise UnderstandingError(f"task {task} needs its dataset at {folder}/ (dataset_dict.json missing): {hint}")


def _splits(folder: Path) -> list[str]:
    return list(json.loads((folder / "dataset_dict.json").read_text()).get("splits", []))


def task_manager(include_path: Sequence[str | Path] = ()):
    """lmms-eval's task index with vqrae's tasks (indexing every yaml takes seconds: built once per process)."""
    return _task_manager(tuple(str(p) for p in include_path))


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: tuple[str, ...]):
    from lmms_eval.tasks import TaskManager

    return TaskManager("WARNING", include_path=[str(TASKS_DIR), *include_path], model_name="vqrae")


def task_configs(tasks: Sequence[str], data_root: str | Path, manager) -> list[dict]:
    """lmms-eval task configs (dicts) pointing every task at its local copy; checks folder and split first."""
    configs = []
    for name in tasks:
        run_name, extra = LOCAL_OVERRIDES.get(name, (name, {}))
        if name in OFFLINE_SUBSTITUTES and not os.environ.get("OPENAI_API_KEY"):
            run_name = OFFLINE_SUBSTITUTES[name]
            logger.info("%s: no OPENAI_API_KEY, scoring with lmms-eval's %s (offline matching)", name, run_name)
        if run_name not in manager.all_tasks:
            via = "" if run_name == name else f"({run_name}) "
            raise UnderstandingError(f"unknown task {name!r}: not an lmms-eval {via}"
                                     f"task or group (known: e.g. {', '.join(DEFAULT_TASKS)}, {SHAPES_TASK})")
        folder = local_dataset_dir(data_root, name)
        if manager._name_is_task(run_name):
            base = manager._get_config(run_name)
            split = base.get("test_split") or base.get("validation_split")
            if split and split not in _splits(folder):
                raise UnderstandingError(f"{folder} has splits {_splits(folder)}; task {name} reads split {split!r}")
        configs.append({"task": run_name, "dataset_path": str(folder), "dataset_name": None,
                        "dataset_kwargs": {"load_from_disk": True}, **extra})
    return configs


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def result_rows(results: dict) -> list[tuple[str, str, float, int]]:
    """(task, metric, value, documents) of every numeric metric lmms-eval reported (stderr entries left out)."""
    rows = []
    n_samples = results.get("n-samples", {})
    for task, metrics in results.get("results", {}).items():
        n = n_samples.get(task, {}).get("effective", 0)
        for key, value in metrics.items():
            if key == "alias" or "_stderr" in key or not _is_number(value):
                continue
            rows.append((task, key.split(",")[0], float(value), int(n)))
    return rows


def check_results(results: dict | None, tasks: Sequence[str]) -> None:
    """lmms-eval can return without having scored a task: say which."""
    if not results or "results" not in results:
        raise RuntimeError("lmms-eval returned no results (see its log above)")
    missing = [t for t in tasks if not any(_is_number(v) for k, v in results["results"].get(t, {}).items()
                                           if k != "alias" and "_stderr" not in k)]
    if missing:
        raise RuntimeError(f"lmms-eval reported no metrics for {missing} (see its log above)")


def markdown_table(rows: Sequence[tuple[str, str, float, int]], title: str = "") -> str:
    lines = [f"# {title}", ""] if title else []
    lines += ["| task | metric | value | documents |", "|---|---|---:|---:|"]
    for task, metric, value, n in rows:
        shown = "n/a" if math.isnan(value) else f"{value:.4f}"
        lines.append(f"| {task} | {metric} | {shown} | {n} |")
    return "\n".join(lines) + "\n"


def _json_safe(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def run_understanding(
    model,
    tasks: str | Sequence[str] = DEFAULT_TASKS,
    data_root: str | Path = ".",
    out: str | Path | None = None,
    limit: float | None = None,
    batch_size: int = 1,
    device: str | None = None,
    dtype: str | None = None,
    max_new_tokens: int | None = None,
    include_path: Sequence[str | Path] = (),
    log_samples: bool = True,
) -> UnderstandingResult:
    """Score `model` (a UnifiedModel folder, a loaded UnifiedModel, or a `VQRAELmms`) on lmms-eval tasks in process.

    Writes OUT/results.json (lmms-eval's results, plus timing), OUT/results.md (a markdown table) and, with
    `log_samples`, OUT/samples_<task>.jsonl (each document's prompt-side fields, answer and per-sample scores).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    names = parse_tasks(tasks)
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise UnderstandingError(f"--data-root {data_root} is not a folder")
    if limit is not None and limit <= 0:
        raise UnderstandingError(f"--limit must be positive, got {limit}")
    if batch_size < 1:
        raise UnderstandingError(f"--batch-size must be >= 1, got {batch_size}")

    from lmms_eval.evaluator import simple_evaluate

    from vqrae.eval.lmms.model import VQRAELmms

    manager = task_manager(include_path)
    configs = task_configs(names, data_root, manager)  # fail on a missing folder before loading the model
    if isinstance(model, VQRAELmms):
        lm = model
    elif isinstance(model, (str, Path)):
        if not Path(model).is_dir():
            raise UnderstandingError(f"--model {model} is not a folder (a UnifiedModel saved with save_pretrained)")
        lm = VQRAELmms(pretrained=str(model), device=device, dtype=dtype, batch_size=batch_size,
                       max_new_tokens=max_new_tokens)
    else:
        lm = VQRAELmms(model=model, batch_size=batch_size, max_new_tokens=max_new_tokens)
    before = dict(lm.stats)
    start = time.perf_counter()
    run_names = [c["task"] for c in configs]
    results = simple_evaluate(model=lm, tasks=[dict(c) for c in configs], limit=limit, batch_size=batch_size,
                              task_manager=manager,
                              log_samples=log_samples, bootstrap_iters=0, verbosity="WARNING",
                              process_docs_parallel=1)
    seconds = time.perf_counter() - start
    check_results(results, run_names)
    samples = results.pop("samples", {}) or {}
    questions = (lm.stats["generate_requests"] - before["generate_requests"]
                 + lm.stats["loglikelihood_requests"] - before["loglikelihood_requests"])
    model_seconds = (lm.stats["generate_seconds"] - before["generate_seconds"]
                     + lm.stats["loglikelihood_seconds"] - before["loglikelihood_seconds"])
    result = UnderstandingResult(results=results, rows=result_rows(results), samples=samples, seconds=seconds,
                                 questions=questions)
    results["vqrae"] = {"tasks": names, "data_root": str(data_root), "wall_seconds": seconds,
                        "model_requests": questions, "model_seconds": model_seconds,
                        "seconds_per_request": model_seconds / questions if questions else None}
    if out is not None:
        result.files = write_outputs(result, Path(out))
    return result


def write_outputs(result: UnderstandingResult, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": out / "results.json", "table": out / "results.md"}
    tmp = files["results"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(result.results), indent=2))
    tmp.replace(files["results"])
    files["table"].write_text(markdown_table(result.rows, "vqrae understanding (lmms-eval)"))
    for task, docs in result.samples.items():
        path = out / f"samples_{task}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(_json_safe(s)) + "\n" for s in docs)
        files[f"samples_{task}"] = path
    return files
