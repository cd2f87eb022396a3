#!/usr/bin/env bash
# Creates the environment (a venv at $VQRAE_VENV, default .venv) if needed, then runs one job:
#   bash scripts/dev.sh quickstart   # the main end-to-end job
#   bash scripts/dev.sh test         # the test suite
#   bash scripts/dev.sh env          # only build the environment
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VQRAE_VENV:-.venv}"
# The torch pair that lies on disk on our CPU machines (a CUDA build that runs on the CPU). GPU users: set
# VQRAE_TORCH to the build for their CUDA, or "skip" to keep what the venv has.
TORCH_SPEC="${VQRAE_TORCH:-torch==2.14.1 torchvision==0.29.1}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.vqrae-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if [ "$TORCH_SPEC" != "skip" ] && ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    "$PY" -m pip install -q $TORCH_SPEC
  fi
  "$PY" -m pip install -q -e ".[train,eval,dev]"
  touch "$stamp"
fi
export PATH="$(cd "$VENV/bin" && pwd):$PATH"
# DeepSpeed compiles its CPU ops once; keep them with the venv so they are not rebuilt on every run.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$(cd "$VENV" && pwd)/torch_extensions}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"

job="${1:-help}"
shift || true
case "$job" in
  test) exec "$PY" -m pytest -q "$@" ;;
  quickstart) exec "$VENV/bin/vqrae" quickstart "$@" ;;
  env) echo "environment ready: $VENV" ;;
  *) echo "usage: bash scripts/dev.sh {quickstart|test|env} [args...]" >&2; exit 2 ;;
esac
