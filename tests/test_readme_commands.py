"""Every shell command of the README runs, at toy size.

The command lines are read from the README's ```bash blocks (`\\` continuations joined, trailing `# comments`
dropped). In a fresh working folder where a smoke quickstart has first been written to `runs/quickstart` (so the
README's paths exist), each line, in README order:
- `vqrae ...`: run in this process by `vqrae.cli.cli.main` with the toy arguments of TOY appended (its longest
  matching prefix), must return 0 and leave the files of EXPECT; later lines use what earlier ones wrote;
- `torchrun ... $(which vqrae) ...` lines listed in LAUNCH: run for real, 2 processes on the CPU (gloo);
- anything else must be in ALLOWLIST, with the reason it cannot run here and where it is covered. The allowlist must
  equal the lines nothing runs, so a new README command that no test runs fails here. Allowlisted `vqrae` commands
  and launcher lines are still checked as far as they can be without GPUs, data or network: the launcher's and
  vqrae's arguments parse, and a `vqrae train` line's config loads with its overrides (a typo in a flag, a stage
  name, a config name or a config key fails).

The commands depend on each other (train, then export from that folder), so run this file whole.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vqrae.cli import quickstart
from vqrae.cli.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VQRAE_SCRIPT = "$(which vqrae)"


# -- reading the README ---------------------------------------------------------------------------------------------


def strip_comment(line: str) -> str:
    """`line` without a trailing shell comment: a `#` at the start or after whitespace, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def bash_commands(text: str) -> list[str]:
    """Every command line of the ```bash blocks of `text`, continuations joined, comments and blank lines dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        pending = ""
        for raw in block.splitlines():
            line = strip_comment(raw)
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            line = (pending + line.strip()).strip()
            pending = ""
            if line:
                commands.append(line)
        assert not pending, f"a ```bash block ends in a continuation: {pending!r}"
    return commands


COMMANDS = bash_commands(README.read_text())


def split_env(line: str) -> tuple[dict[str, str], list[str]]:
    """`A=1 B=2 cmd args` -> ({A: 1, B: 2}, [cmd, args...]); `$(which vqrae)` stays one word."""
    words = shlex.split(line.replace(VQRAE_SCRIPT, "__VQRAE__"))
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, [VQRAE_SCRIPT if w == "__VQRAE__" else w for w in words]


# -- toy sizes ------------------------------------------------------------------------------------------------------

SMOKE = quickstart.SMOKE
_UNIFIED = ["batch_size=4", "max_steps=2", "val_num=0", "save_every=0", "max_length=256", "warmup_steps=0"]
_STAGE1 = [o for o in SMOKE["tokenizer-stage1"] if not o.startswith(("max_steps", "codebook_dim"))] + ["max_steps=2"]
_ABLATE_UNIFIED = ["--vqa-images", "2", *_UNIFIED, "align:data=[{task: describe, data: shapes, num: 8}]",
                   "sft:data=[{task: conversation, data: shapes, num: 8}]"]
_SWEEP = [('overrides=["data=[{task: t2i, data: shapes, num: 8}]", batch_size=4, max_steps=2, val_num=4, '
           "eval_every=2, warmup_steps=0, save_every=0, log_every=1, max_length=256]"),
          ("sizes=[{name: xs, hidden_size: 16, num_layers: 1, num_heads: 2}, {name: m, hidden_size: 24, "
           "num_layers: 1, num_heads: 2}, {name: xl, hidden_size: 32, num_layers: 2, num_heads: 2}]"),
          "tokens=0", "bootstrap=10", "profile_samples=8", "geneval.per_tag=1", "geneval.num_images=1"]

# Arguments appended to a `vqrae` line, by the longest prefix of the line that is a key here. Appended flags and
# key=value overrides come last, so they win over the README's own values (argparse and load_config take the last).
TOY: dict[str, list[str]] = {
    "vqrae quickstart": ["--smoke"],
    "vqrae quickstart --configs": ["--smoke", "--until", "eval-tokenizer"],
    "vqrae chat": ["--max-new-tokens", "4"],
    "vqrae generate": ["--num-images", "1"],
    "vqrae reconstruct": [],
    "vqrae data shapes": ["--num", "300", "--workers", "1"],
    "vqrae data prompts": ["--workers", "1"],
    "vqrae data check": [],
    **{f"vqrae train {stage}": SMOKE[stage] for stage in ("encoder-pretrain", "tokenizer-stage1", "tokenizer-stage2",
                                                           "lm-pretrain", "unified-align", "unified-sft")},
    "vqrae train unified-gen": [*_UNIFIED, "data=[{task: t2i, data: shapes, num: 8}]"],
    "vqrae export": [],
    "vqrae scale --config shapes-tiny/scaling": _SWEEP,
    "vqrae scale --config paper/scaling --plan": [],
    "vqrae eval reconstruction": ["--num", "8"],
    "vqrae eval patch-ceiling": ["--num", "8", "--train-num", "20", "--codebook-size", "16", "--iters", "3"],
    "vqrae eval patch-ceiling --data runs/quickstart/shapes64/test --train-data runs/quickstart/shapes64/train "
    "--patch 8 --tokenizer": ["--num", "8", "--train-num", "20", "--codebook-size", "16", "--iters", "3",
                              "--probe-steps", "5", "--out", "runs/eval/patch-ceiling-tokenizer"],
    "vqrae eval geneval --model": ["--limit", "2", "--num-images", "1"],
    "vqrae eval geneval --images": [],
    "vqrae eval geneval --reconstruct": ["--limit", "2", "--num-images", "1"],
    "vqrae eval understanding": ["--limit", "2", "--batch-size", "2"],
    "vqrae bench quantizer": ["--num-vectors", "64", "--codebook-size", "256", "--dim", "16", "--repeats", "1"],
    "vqrae bench generate": ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--codebook-size", "64",
                             "--grid", "4", "--prompts", "2", "--repeats", "1"],
    "vqrae bench train-step": ["--hidden-size", "32", "--layers", "1", "--heads", "2", "--image-size", "32",
                               "--codebook-size", "64", "--batch-size", "2", "--batches", "2", "--steps", "2",
                               "--rounds", "2", "--warmup", "1"],
    "vqrae bench cache": ["--batch-size", "2", "--rounds", "2", "--num", "8"],
    "vqrae bench model-size": [],
    "vqrae ablate codebook-dim": ["--dims", "8,16", *_STAGE1],
    "vqrae ablate quantizer": _STAGE1,
    "vqrae ablate understanding-input": _ABLATE_UNIFIED,
    "vqrae ablate distillation": [*_ABLATE_UNIFIED, *(f"tok:{o}" for o in SMOKE["tokenizer-stage2"] if
                                                      not o.startswith("max_steps")), "tok:max_steps=2"],
}
# Lines of the interactive chat get this on stdin (a question, a drawing, a saved transcript, the end).
CHAT_INPUT = "How many shapes are there?\n/draw a red circle\n/save runs/chat/session.json\n/quit\n"

# Files a command must leave, by the longest matching prefix (besides exit code 0).
EXPECT: dict[str, list[str]] = {
    "vqrae quickstart": ["runs/quickstart/report.md"],
    "vqrae quickstart --configs shapes-tiny-p4": ["runs/quickstart-p4/tokenizer-stage2/final/config.json"],
    "vqrae chat --model runs/quickstart/unified-sft/final --image": ["runs/chat/session.json"],
    "vqrae chat --model runs/quickstart/unified-sft/final --demo": ["runs/chat-demo/transcript.md"],
    "vqrae generate": ["runs/drawings/generations.jsonl", "runs/drawings/p0000_i00.png"],
    "vqrae reconstruct": ["runs/reconstruction.png"],
    "vqrae data shapes --out runs/shapes64": ["runs/shapes64/train", "runs/shapes64/val"],
    "vqrae data shapes --out runs/lmms/shapesworld_vqa": ["runs/lmms/shapesworld_vqa"],
    "vqrae data prompts": ["runs/prompts/evaluation_metadata.jsonl"],
    "vqrae train encoder-pretrain": ["runs/shapes-tiny/encoder/final/config.json"],
    "vqrae train tokenizer-stage1": ["runs/shapes-tiny/tokenizer-stage1/final/config.json"],
    "vqrae train tokenizer-stage2": ["runs/shapes-tiny/tokenizer-stage2/final/config.json"],
    "vqrae train lm-pretrain": ["runs/shapes-tiny/lm/final/config.json"],
    "vqrae train unified-align": ["runs/shapes-tiny/unified-align/final/config.json"],
    "vqrae train unified-sft --config shapes-tiny/unified-sft init=runs/shapes-tiny/unified-align/final lora.r=16":
        ["runs/shapes-tiny/unified-sft-lora/final/base/config.json", "runs/shapes-tiny/unified-sft-lora/final/adapter"],
    "vqrae train unified-sft": ["runs/shapes-tiny/unified-sft/final/config.json"],
    "vqrae train unified-gen": ["runs/shapes-tiny/unified-gen/final/config.json"],
    "vqrae export merge-lora": ["runs/shapes-tiny/unified-sft-merged/config.json"],
    "vqrae export init-unified": ["runs/shapes-tiny/init/config.json"],
    "vqrae scale --config shapes-tiny/scaling": ["runs/shapes-tiny/scaling/scaling.json"],
    "vqrae eval reconstruction": ["runs/eval/reconstruction/summary.json"],
    "vqrae eval patch-ceiling": ["runs/eval/patch-ceiling/summary.json", "runs/eval/patch-ceiling/patch4_k16.png"],
    "vqrae eval patch-ceiling --data runs/quickstart/shapes64/test --train-data runs/quickstart/shapes64/train "
    "--patch 8 --tokenizer": ["runs/eval/patch-ceiling-tokenizer/tokenizer-stage2-code-table.png",
                              "runs/eval/patch-ceiling-tokenizer/tokenizer-stage2-feature-MLP.png"],
    "vqrae eval geneval --model": ["runs/eval/geneval/summary.json"],
    "vqrae eval geneval --images": ["runs/eval/geneval/results.jsonl"],
    "vqrae eval geneval --reconstruct": ["runs/eval/ceiling/ceiling.json"],
    "vqrae eval understanding": ["runs/eval/understanding/results.md"],
    "vqrae bench train-step": ["runs/bench/train-step.json"],
    "vqrae bench cache": ["runs/bench/cache.json"],
    "vqrae ablate codebook-dim": ["runs/ablate-codebook-dim/summary.json"],
    "vqrae ablate quantizer": ["runs/ablate-quantizer/summary.json"],
    "vqrae ablate understanding-input": ["runs/ablate-understanding-input/summary.md"],
    "vqrae ablate distillation": ["runs/ablate-distillation/summary.md"],
}

# Launcher lines run for real with 2 CPU processes (slow: ~1 minute each, so one), and the files they must leave.
LAUNCH: dict[str, list[str]] = {
    "OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 $(which vqrae) train unified-sft --config "
    "shapes-tiny/unified-sft init=runs/shapes-tiny/unified-align/final deepspeed=zero3 "
    "output_dir=runs/shapes-tiny/unified-sft-zero3": ["runs/shapes-tiny/unified-sft-zero3/final/config.json"],
}

_GPU = "needs 8 GPUs, the paper's data and the hub's weights; its arguments and config are checked here"
# The README lines nothing runs here, with the reason and where they are covered.
ALLOWLIST: dict[str, str] = {
    'bash scripts/dev.sh env':
        "builds the environment this test runs in (CI runs it); tests/test_packaging.py checks the install",
    'bash scripts/dev.sh quickstart':
        "runs `vqrae quickstart`, which this file runs (`--smoke`) and tests/test_quickstart.py tests",
    'pip install -e ".[train,eval]"':
        "installs the package this test imports; tests/test_packaging.py checks the install and its entry points",
    'source .venv/bin/activate': "shell set-up; this test runs inside that environment",
    'vqrae bench zero3-load':
        "4 torchrun launches of 2 processes (minutes on 2 cores); the partitioned load it measures is "
        "tests/test_zero3_load.py; its arguments are checked here",
    'vqrae eval understanding --model runs/quickstart/unified-sft/final --tasks mme,pope,gqa,textvqa_val,'
    'mmbench_en_dev,seedbench,mmmu_val,ai2d,scienceqa_img --data-root data/lmms':
        "needs the lmms-eval benchmark datasets (hub downloads); the same path runs here on shapesworld_vqa, and on "
        "fixture MME/POPE datasets in tests/test_understanding_lmms.py",
    'torchrun --standalone --nproc_per_node 8 $(which vqrae) train tokenizer-stage1 --config paper/tokenizer-stage1':
        _GPU,
    'deepspeed --no_local_rank --num_gpus 8 $(which vqrae) train tokenizer-stage2 --config paper/tokenizer-stage2':
        _GPU,
    'torchrun --nnodes 4 --node_rank $RANK --master_addr $ADDR --master_port 29500 --nproc_per_node 8 '
    '$(which vqrae) train unified-gen --config paper/unified-gen batch_size=16 grad_accum=1':
        "several nodes of 8 GPUs; " + _GPU,
    'deepspeed --hostfile hostfile --no_local_rank $(which vqrae) train unified-sft --config paper/unified-sft '
    'batch_size=4': "several nodes of 8 GPUs (a hostfile); " + _GPU,
    'torchrun --standalone --nproc_per_node 8 $(which vqrae) train unified-gen --config paper/unified-gen '
    'deepspeed=zero1': _GPU,
    'HF_HUB_OFFLINE=1 torchrun --standalone --nproc_per_node 8 $(which vqrae) train unified-gen --config '
    'paper/unified-gen llm=/models/Qwen3-0.6B': "a local copy of Qwen3-0.6B and " + _GPU,
}


def _longest_prefix(line: str, table: dict) -> str | None:
    """The longest key of `table` that is `line` or a prefix of it ending at a word boundary."""
    hits = [k for k in table if line == k or line.startswith(k + " ")]
    return max(hits, key=len) if hits else None


RUN = [c for c in COMMANDS if c not in ALLOWLIST and (c.startswith("vqrae ") or c in LAUNCH)]


def _id(line: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=/-]+", "_", line)[:90]


# -- the working folder ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A fresh folder, the working directory of every command, with a smoke quickstart in runs/quickstart."""
    import torch

    root = tmp_path_factory.mktemp("readme")
    threads = torch.get_num_threads()
    # One thread: toy models are all small matmuls, for which the thread pool's synchronisation on our shared 2-core
    # machines costs more than it saves (the toy sweep: 38 s with 2 threads, 10 s with 1).
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(root)
            mp.setenv("HF_HUB_OFFLINE", "1")
            assert main(["quickstart", "--smoke", "--out", "runs/quickstart"]) == 0
            yield root
    finally:
        torch.set_num_threads(threads)


def _vqrae(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse: a wrong flag or a missing argument
        return exc.code if isinstance(exc.code, int) else 2


class InProcessSweep:
    """Stands in for subprocess.run in `vqrae scale`: each size's `python -m vqrae.cli train unified-gen ...` runs
    in this process (a fresh interpreter per size costs ~10 s of imports here)."""

    def __call__(self, cmd, check=False, **kwargs):
        assert cmd[:5] == [sys.executable, "-m", "vqrae.cli", "train", "unified-gen"], cmd
        return subprocess.CompletedProcess(cmd, _vqrae(cmd[3:]))


def _launch(line: str, root: Path) -> subprocess.CompletedProcess:
    env, words = split_env(line)
    assert words[0] == "torchrun" and VQRAE_SCRIPT in words, line
    script = Path(sys.executable).with_name("vqrae")  # what `which vqrae` finds in the activated environment
    if not script.is_file():
        script = Path(shutil.which("vqrae") or "vqrae")
    assert script.is_file(), f"no vqrae console script beside {sys.executable} or on PATH"
    argv = [sys.executable, "-m", "torch.distributed.run", *[str(script) if w == VQRAE_SCRIPT else w for w in words[1:]]]
    stage = words[words.index(VQRAE_SCRIPT) + 2]
    argv += TOY[f"vqrae train {stage}"]
    full_env = {**os.environ, **env, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(argv, cwd=root, env=full_env, capture_output=True, text=True, timeout=400, check=False)


@pytest.mark.parametrize("line", RUN, ids=[f"{i:02d}-{_id(c)}" for i, c in enumerate(RUN)])
def test_readme_command_runs(line, workspace, monkeypatch, capsys):
    if line in LAUNCH:
        proc = _launch(line, workspace)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        expected = LAUNCH[line]
    else:
        argv = shlex.split(line)[1:]
        toy = _longest_prefix(line, TOY)
        assert toy is not None, f"no toy size in TOY for: {line}"
        if argv[0] == "chat" and "--demo" not in argv:
            monkeypatch.setattr(sys, "stdin", io.StringIO(CHAT_INPUT))
        if argv[0] == "scale":
            from vqrae.train import sweep

            monkeypatch.setattr(sweep.subprocess, "run", InProcessSweep())
        rc = _vqrae([*argv, *TOY[toy]])
        out = capsys.readouterr()
        assert rc == 0, f"exit {rc}: {line}\n{out.err[-3000:]}"
        key = _longest_prefix(line, EXPECT)
        expected = EXPECT[key] if key else []
        if argv == ["quickstart"]:
            assert out.out.count("[skip]") == len(quickstart.STEPS)  # the finished quickstart is reused
        if argv[:2] == ["bench", "model-size"]:
            _check_quoted_memory(argv[argv.index("--config") + 1], out.out)
    missing = [p for p in expected if not (workspace / p).exists()]
    assert not missing, f"{line} did not write {missing}"


def _check_quoted_memory(config: str, printed: str) -> None:
    """The README's memory table quotes what `vqrae bench model-size` prints: its ZeRO-2 and ZeRO-3 GiB per GPU."""
    rows = re.finditer(r"^(zero[23])\s+(?:[\d.]+\s+){4}([\d.]+)", printed, re.MULTILINE)  # weights ... total
    totals = {m.group(1): m.group(2) for m in rows}
    assert set(totals) == {"zero2", "zero3"}, printed
    rows = [r for r in README.read_text().splitlines() if r.startswith(f"| `{config}`")]
    assert len(rows) == 2, f"the README should have {config} in the config table and in the memory table"
    cells = [c.strip().strip("*") for c in rows[1].split("|")]
    assert cells[-3:-1] == [totals["zero2"], totals["zero3"]], (rows[1], totals)


def test_every_readme_command_is_run_or_allowlisted():
    not_run = {c for c in COMMANDS if c not in RUN}
    assert not_run == set(ALLOWLIST), (
        f"README lines that nothing runs and the allowlist lacks: {sorted(not_run - set(ALLOWLIST))}; "
        f"allowlisted lines no longer in the README (or now run): {sorted(set(ALLOWLIST) - not_run)}")
    assert set(LAUNCH) <= set(COMMANDS), f"LAUNCH lines no longer in the README: {set(LAUNCH) - set(COMMANDS)}"
    for line in RUN:
        assert line in LAUNCH or _longest_prefix(line, TOY) is not None, f"no toy size in TOY for: {line}"


def _check_vqrae_arguments(argv: list[str]) -> None:
    """Parse a vqrae command line; for `train`, load its config with its overrides (keys, values, DeepSpeed stage)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"vqrae {shlex.join(argv)}: the arguments do not parse")
    if args.command == "train":
        from vqrae.train import load_config
        from vqrae.train.backends import load_ds_config
        from vqrae.train.stages import get_stage

        cfg = load_config(get_stage(args.stage).config_class, args.config[0], [*args.overrides, *args.config[1:]])
        if cfg.deepspeed:
            load_ds_config(cfg.deepspeed)


@pytest.mark.parametrize("line", sorted(ALLOWLIST), ids=[_id(c) for c in sorted(ALLOWLIST)])
def test_allowlisted_commands_are_checked_as_far_as_they_can_be(line):
    _, words = split_env(line)
    if words[0] == "vqrae":
        _check_vqrae_arguments(words[1:])
        return
    if words[0] not in ("torchrun", "deepspeed"):
        assert words[0] in ("bash", "source", "pip"), f"allowlisted, but not a set-up line or a launcher: {line}"
        if words[0] == "bash":  # a job that scripts/dev.sh has
            assert f"\n  {words[2]}) " in (ROOT / words[1]).read_text(), f"{words[1]} has no job {words[2]!r}"
        if words[0] == "pip":  # extras that pyproject.toml declares
            import tomllib

            extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
            wanted = re.fullmatch(r"\.\[([a-z,]+)\]", words[-1]).group(1).split(",")
            assert set(wanted) <= set(extras), f"unknown extras {set(wanted) - set(extras)} in: {line}"
        return
    i = words.index(VQRAE_SCRIPT)
    launcher_args = [w.replace("$RANK", "0").replace("$ADDR", "127.0.0.1") for w in words[1:i]]
    if words[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        try:
            get_args_parser().parse_args([*launcher_args, "vqrae", *words[i + 1:]])
        except SystemExit:
            pytest.fail(f"torchrun's arguments do not parse: {line}")
    else:
        from deepspeed.launcher.runner import parse_args

        try:
            parse_args([*launcher_args, "vqrae", *words[i + 1:]])
        except SystemExit:
            pytest.fail(f"the deepspeed launcher's arguments do not parse: {line}")
    _check_vqrae_arguments(words[i + 1:])


def test_extraction_joins_continuations_and_drops_comments():
    text = ('```bash\nvqrae a --x "b # c"   # a comment\n# only a comment\n\ntorchrun --n 2 \\\n  $(which vqrae) '
            "train s\n```\n```python\nprint('not bash')\n```\n")
    assert bash_commands(text) == ['vqrae a --x "b # c"', "torchrun --n 2 $(which vqrae) train s"]
    assert split_env("A=1 B=x torchrun $(which vqrae) t") == ({"A": "1", "B": "x"}, ["torchrun", VQRAE_SCRIPT, "t"])
    assert json.loads(json.dumps(TOY))  # plain data: lists of strings
