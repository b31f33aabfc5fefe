"""Prompt set formats, converters and fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cropi.data.io import dataset_fingerprint, load_prompts, save_hf_dataset, save_prompts
from cropi.data.schema import validate_record
from cropi.utils.errors import CropiError

ROWS = [{"id": "a", "prompt": "What is 2+2?", "answer": "4", "source": "add", "level": 1},
        {"id": "b", "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "3*3?"}],
         "answer": 9, "source": "mul", "meta": {"verifier": "numeric"}}]


def test_jsonl_parquet_hf_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    recs = load_prompts(src)
    assert recs[0].prompt == [{"role": "user", "content": "What is 2+2?"}]
    assert recs[1].answer == "9" and recs[1].verifier == "numeric" and recs[0].level == "1"
    for name in ("out.jsonl", "out.parquet"):
        save_prompts(recs, tmp_path / name)
        assert load_prompts(tmp_path / name) == recs
    save_hf_dataset(recs, tmp_path / "hf")
    assert load_prompts(tmp_path / "hf") == recs


def test_fingerprint_is_content_hash() -> None:
    recs = [validate_record(r) for r in ROWS]
    assert dataset_fingerprint(recs) == dataset_fingerprint([validate_record(r) for r in ROWS])
    changed = [validate_record({**ROWS[0], "answer": "5"}), recs[1]]
    assert dataset_fingerprint(changed) != dataset_fingerprint(recs)


def test_verl_parquet_converter(tmp_path: Path) -> None:
    rows = [{"data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": "q1"}], "ability": "math",
             "reward_model": {"style": "rule", "ground_truth": "72"}, "extra_info": {"index": 3, "split": "train"}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    (rec,) = load_prompts(tmp_path / "train.parquet")
    assert rec.id == "openai/gsm8k-3" and rec.answer == "72" and rec.source == "openai/gsm8k"


def test_gsm8k_converter(tmp_path: Path) -> None:
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "How many?", "answer": "He has 2,000 + 842.\n#### 2,842"}) + "\n")
    (rec,) = load_prompts(path)
    assert rec.answer == "2842" and rec.source == "gsm8k" and rec.prompt[-1]["content"] == "How many?"


def test_unknown_verifier_is_a_data_error(tmp_path: Path) -> None:
    from cropi.config import DataConfig
    from cropi.data.sets import load_sets

    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({**ROWS[0], "meta": {"verifier": "nope"}}) + "\n")
    with pytest.raises(CropiError, match=r"p.jsonl.*row 1.*meta.verifier.*nope"):
        load_sets(DataConfig(suite=None, pool=str(bad), targets={"t": str(bad)}))
