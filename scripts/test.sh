#!/usr/bin/env bash
# Install cropi with its dev extras into .venv, then run every test (slow ones included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/python -m pip install -q --no-deps -r requirements-verl-test.txt
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/lint-imports
.venv/bin/python -m pytest -m "slow or not slow" "$@"
