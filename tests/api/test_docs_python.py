"""Every ```python block of docs/python.md runs, in order, on the tiny model: MODEL is replaced by
the tiny model's folder, data/ holds small parity-verifier sets (a random model answers no
arithmetic, so every reward would be 0), and "openai/gsm8k" sits in a local datasets cache."""

from __future__ import annotations

import json
import re
import time
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
import parity_cli  # noqa: E402, F401  (registers the test-only parity verifier)
from hf_cache import cache_hub_dataset  # noqa: E402

DOC = Path(__file__).parents[2] / "docs" / "python.md"
MODEL_LINE = re.compile(r'^MODEL = "default"(.*)$', re.M)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def _write_sets(folder: Path) -> None:
    folder.mkdir()

    def rows(prefix: str, n: int, source: str) -> str:
        return "".join(json.dumps({"id": f"{prefix}{i}", "prompt": f"Say something about {source} {i}.",
                                   "answer": "0", "source": source, "meta": {"verifier": "parity"}}) + "\n"
                       for i in range(n))

    (folder / "pool.jsonl").write_text(rows("p", 6, "alpha") + rows("q", 6, "beta"))
    (folder / "gsm8k_val.jsonl").write_text(rows("v", 5, "alpha"))
    (folder / "gsm8k_test.jsonl").write_text(rows("t", 3, "alpha"))


def test_docs_python_blocks_run(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    from cropi.select import POLICIES

    monkeypatch.setattr(POLICIES, "_entries", dict(POLICIES._entries))  # the doc's own policy stays here
    text = DOC.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    assert len(blocks) >= 6 and sum(bool(MODEL_LINE.search(b)) for b in blocks) == 1
    gsm = [{"question": f"Ann has {i} pens and gets 2 more. How many?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
           for i in range(6)]
    cache_hub_dataset(tmp_path / "hf", "openai/gsm8k", "main", {"train": gsm, "test": gsm[:3]})
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    work = tmp_path / "work"
    work.mkdir()
    _write_sets(work / "data")
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "docs_python"}
    for n, block in enumerate(blocks, start=1):
        code = MODEL_LINE.sub(lambda m: f"MODEL = {str(tiny_model_dir)!r}{m.group(1)}", block)
        try:
            t0 = time.perf_counter()
            exec(compile(code, f"docs/python.md block {n}", "exec"), namespace)  # noqa: S102
            print(f"BLOCK {n}: {time.perf_counter() - t0:.1f} s")
        except Exception as exc:
            raise AssertionError(f"docs/python.md python block {n} failed: {exc!r}\n{block}") from exc
    run = work / "runs"
    assert (run / "py-demo" / "stages" / "stage_001" / "checkpoint" / "config.json").exists()
    assert [stage for stage, _ in namespace["curriculum"].served] == [0, 1]
    assert (run / "trl-demo" / "stages" / "stage_001" / "selection.json").exists()
