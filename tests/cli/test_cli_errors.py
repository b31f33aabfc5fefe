"""Malformed inputs: one clear line naming file, row and field, exit code 2, nothing computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cropi.cli import app

GOOD = {"id": "a", "prompt": "What is 1+1?", "answer": "2", "source": "add"}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


CASES = {
    "bad_json": (["{not json"], "row 1", None),
    "missing_id": ([{k: v for k, v in GOOD.items() if k != "id"}], "row 1", "id"),
    "missing_answer": ([GOOD, {**GOOD, "id": "b", "answer": None}], "row 2", "answer"),
    "prompt_number": ([{**GOOD, "prompt": 5}], "row 1", "prompt"),
    "bad_role": ([{**GOOD, "prompt": [{"role": "robot", "content": "hi"}]}], "row 1", "prompt"),
    "last_not_user": ([{**GOOD, "prompt": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "a"}]}], "row 1", "prompt"),
    "duplicate_id": ([GOOD, GOOD], "row", "id"),
    "meta_not_object": ([{**GOOD, "meta": [1, 2]}], "row 1", "meta"),
    "empty_source": ([{**GOOD, "source": " "}], "row 1", "source"),
    "answer_is_list": ([{**GOOD, "answer": [1]}], "row 1", "answer"),
    "gsm8k_no_tail": ([{"question": "q?", "answer": "it is 4"}], "row 1", "answer"),
    "verl_no_ground_truth": ([{"prompt": [{"role": "user", "content": "q"}], "reward_model": {},
                               "data_source": "x"}], "row 1", "reward_model"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_pool_file(tmp_path: Path, case: str) -> None:
    rows, where, field = CASES[case]
    pool = _jsonl(tmp_path / "pool.jsonl", rows)
    target = _jsonl(tmp_path / "t.jsonl", [GOOD])
    res = CliRunner().invoke(app, ["rollout", "--pool", str(pool), "--target", f"t={target}",
                                   "--out-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2, res.output
    msg = res.output.strip()
    assert len(msg.splitlines()) == 1, msg
    assert "pool.jsonl" in msg and where in msg
    if field:
        assert f"field '{field}'" in msg
    assert not (tmp_path / "runs" / "cropi" / "rollouts").exists()  # nothing computed


@pytest.mark.parametrize("args,needle", [
    (["--pool", "missing.jsonl"], "does not exist"),
    (["--pool", "pool.csv"], "unknown extension"),
    (["--set", "rollout.k_pool=1"], "rollout.k_pool"),
    (["--set", "rollout.kpool=4"], "unknown key"),
    (["--set", "oops"], "KEY=VALUE"),
    (["--target", "novalue"], "NAME=FILE"),
])
def test_bad_flags(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "pool.csv").write_text("id,prompt\n")
    res = CliRunner().invoke(app, ["rollout", *[a.replace("pool.csv", str(tmp_path / "pool.csv")) for a in args],
                                   "--out-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2, res.output
    assert needle in res.output


def test_bad_yaml_config(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("rollout:\n  k_pool: [1, 2\n")
    res = CliRunner().invoke(app, ["rollout", str(cfg)])
    assert res.exit_code == 2 and "run.yaml" in res.output and "YAML" in res.output


def test_config_wrong_type(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("rollout:\n  k_pool: many\n")
    res = CliRunner().invoke(app, ["rollout", str(cfg)])
    assert res.exit_code == 2 and "rollout.k_pool" in res.output
