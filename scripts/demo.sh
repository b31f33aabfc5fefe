#!/usr/bin/env bash
# Install cropi into .venv, then run the demo on the embedded default model and suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/cropi demo "$@"
