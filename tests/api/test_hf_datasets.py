"""``hf:NAME:CONFIG:SPLIT`` data sets through ``datasets.load_dataset`` and its local cache, with
no network: the GSM8K converter, a user column map, clear errors, and ``cropi run --pool hf:...``
end to end on the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from hf_cache import cache_hub_dataset  # noqa: E402

from cropi.data.io import load_prompts, parse_hf_spec  # noqa: E402
from cropi.utils.errors import CropiError  # noqa: E402

E2E = Path(__file__).parents[1] / "e2e"
GSM = [{"question": f"Tom has {i} apples and buys 1 more. How many now?",
        "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(6)]


def _parity_rows(prefix: str, n: int) -> list[dict]:
    return [{"uid": f"{prefix}{i}", "problem": f"Say something about topic {i}.", "solution": str(i),
             "kind": "alpha" if i % 2 else "beta"} for i in range(n)]


@pytest.fixture()
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import datasets

    cache = tmp_path / "hf_datasets"
    cache_hub_dataset(cache, "cropi-test/tiny-gsm8k", "main", {"train": GSM, "test": GSM[:2]})
    cache_hub_dataset(cache, "cropi-test/parity", "default",
                      {"train": _parity_rows("p", 12), "validation": _parity_rows("v", 4),
                       "test": _parity_rows("t", 3)})
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return cache


def test_parse_hf_spec() -> None:
    spec = parse_hf_spec("hf:openai/gsm8k:main:train[:100]?prompt=question&source=gsm8k")
    assert (spec.name, spec.config, spec.split) == ("openai/gsm8k", "main", "train[:100]")
    assert spec.columns == {"prompt": "question", "source": "gsm8k"}
    assert parse_hf_spec("hf:owner/name") == parse_hf_spec("hf:owner/name::")
    assert (parse_hf_spec("hf:owner/name::test").config, parse_hf_spec("hf:owner/name::test").split) == (None, "test")
    with pytest.raises(CropiError, match="column map"):
        parse_hf_spec("hf:x/y:c:train?question=prompt")


def test_gsm8k_from_the_local_cache_offline(hf_cache: Path) -> None:
    recs = load_prompts("hf:cropi-test/tiny-gsm8k:main:train")
    assert len(recs) == 6 and recs[2].answer == "3" and recs[2].verifier == "math"
    assert [r.id for r in load_prompts("hf:cropi-test/tiny-gsm8k:main:test")] == ["gsm8k-1", "gsm8k-2"]
    assert len(load_prompts("hf:cropi-test/tiny-gsm8k:main:train[:3]")) == 3


def test_column_map_and_errors(hf_cache: Path) -> None:
    recs = load_prompts("hf:cropi-test/parity:default:train?id=uid&prompt=problem&answer=solution"
                        "&source=kind&verifier=parity")
    assert [r.id for r in recs[:2]] == ["p0", "p1"] and recs[1].source == "alpha"
    assert recs[0].verifier == "parity" and recs[0].prompt[-1]["content"] == "Say something about topic 0."
    literal = load_prompts("hf:cropi-test/parity:default:test?prompt=problem&answer=solution&source=mine")
    assert {r.source for r in literal} == {"mine"} and literal[0].id == "parity-1"
    with pytest.raises(CropiError, match="no column 'nope'"):
        load_prompts("hf:cropi-test/parity:default:train?prompt=nope&answer=solution")
    with pytest.raises(CropiError, match="HF_HUB_OFFLINE=1 reads only the local datasets cache"):
        load_prompts("hf:cropi-test/not-cached:main:train")


def test_cropi_run_with_hf_pool_offline(tiny_model_dir: Path, hf_cache: Path, tmp_path: Path) -> None:
    cols = "?id=uid&prompt=problem&answer=solution&source=kind&verifier=parity"
    name = "hf:cropi-test/parity:default"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(hf_cache), "PYTHONPATH": str(E2E)}
    args = ["run", "--name", "hf", "--out-dir", str(tmp_path / "runs"), "--model", str(tiny_model_dir),
            "--pool", f"{name}:train{cols}", "--target", f"a={name}:validation{cols}",
            "--test", f"target_a={name}:test{cols}",
            "--set", "rollout.k_pool=4", "--set", "rollout.k_target=4", "--set", "rollout.batch_size=16",
            "--set", "rollout.max_new_tokens=8", "--set", "projection.k=64", "--set", "select.ratio=0.25",
            "--set", "curriculum.stages=1", "--set", "train.steps_per_stage=1", "--set", "train.max_new_tokens=8",
            "--set", "train.prompts_per_step=2", "--set", "train.samples_per_prompt=2",
            "--set", "eval.samples=0", "--set", "eval.max_new_tokens=8", "--set", "curriculum.tensorboard=false"]
    proc = subprocess.run([sys.executable, str(E2E / "parity_cli.py"), *args], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "hf"
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert stored["data"]["pool"] == f"{name}:train{cols}"
    assert (run_dir / "stages" / "stage_000" / "checkpoint" / "config.json").exists()
    events = (run_dir / "metrics.jsonl").read_text()
    assert '"event": "train"' in events and '"event": "eval"' in events
