#!/usr/bin/env bash
# GPU check of the scoring path, on a machine with one NVIDIA GPU (docs/scaling.md#throughput-to-expect).
#
#   bash scripts/gpu-check.sh [OUT_DIR]        # OUT_DIR: default $OUT, else ./gpu-check-out
#
# 1. prints the versions (python, torch, CUDA, cuDNN, driver, GPU, transformers, ...) and checks
#    that every import of the scoring path resolves (fails fast otherwise);
# 2. pytest tests/scale/test_gpu_path.py tests/influence/test_projection.py: the CUDA features
#    equal the CPU's within the tests' tolerance (log: OUT_DIR/pytest.log);
# 3. python benchmarks/gpu_scoring.py: seconds per prompt and peak GPU memory per projector on a
#    random Qwen2-1.5B-shaped model, K = 8 x 512 tokens (about 70 s on one H200; log:
#    OUT_DIR/gpu_scoring.log); its result file benchmarks/results/gpu_scoring.json is copied to
#    OUT_DIR. Extra arguments for it: GPU_SCORING_ARGS="--time-box 30 ...".
#
# Needs python3 (PYTHON=...) with torch (CUDA), transformers, numpy, pyarrow, rich, pyyaml and
# pytest (the image of the H200 it ran on had them all); cropi is used from this checkout
# (PYTHONPATH), not installed; trl, reasoning-gym and math-verify are not needed. On a machine
# without network, wheels put in .whl/ are installed into /tmp/site first. CROPI_GIT_COMMIT names
# the commit where the copied checkout has no .git or one that does not match its files (it goes
# into the result file as commit_given).
# Exit status: 0 when both steps passed, else that of the first failure (the benchmark runs even
# when a test failed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu-check-out}}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

# ------------------------------------------------------------------ 1. versions and imports
{
  echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) commit ${CROPI_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  "$PY" - <<'EOF'
import importlib, platform, sys
import torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
p = torch.cuda.get_device_properties(0)
print("gpu", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.1f} GiB", torch.cuda.device_count(), "device(s)")
from importlib.metadata import version
for name, dist in (("transformers", "transformers"), ("numpy", "numpy"), ("pyarrow", "pyarrow"),
                   ("rich", "rich"), ("yaml", "pyyaml"), ("pytest", "pytest")):
    importlib.import_module(name)
    print(name, version(dist))
# the scoring path as the tests and the benchmark import it (no trl / reasoning-gym / math-verify)
for name in ("cropi.config", "cropi.influence.pipeline", "cropi.influence.popi",
             "cropi.influence.projection", "cropi.influence.projection.factorized",
             "cropi.model.logprobs", "cropi.rollout.store", "transformers.models.qwen2",
             "transformers.models.llama"):
    importlib.import_module(name)
print("imports ok")
EOF
} 2>&1 | tee "$OUT_DIR/versions.txt" || exit 1

# ------------------------------------------------------------------ 2. CPU/CUDA equality tests
"$PY" -m pytest -p no:cacheprovider -v -ra tests/scale/test_gpu_path.py \
  tests/influence/test_projection.py 2>&1 | tee "$OUT_DIR/pytest.log"
rc_tests=$?

# ------------------------------------------------------------------ 3. 1.5B scoring benchmark
# shellcheck disable=SC2086
marker=$(mktemp)
"$PY" benchmarks/gpu_scoring.py ${GPU_SCORING_ARGS:-} 2>&1 | tee "$OUT_DIR/gpu_scoring.log"
rc_bench=$?
for f in benchmarks/results/gpu_scoring*.json; do  # only files this run wrote
  if [ -f "$f" ] && [ "$f" -nt "$marker" ]; then cp "$f" "$OUT_DIR/"; fi
done
rm -f "$marker"
nvidia-smi >"$OUT_DIR/nvidia-smi.txt" 2>&1 || true

echo "pytest exit $rc_tests, gpu_scoring exit $rc_bench"
[ "$rc_tests" -ne 0 ] && exit "$rc_tests"
exit "$rc_bench"
