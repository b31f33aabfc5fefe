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


# --- files that are not UTF-8 -----------------------------------------------------------------
def _one_line(res) -> str:
    msg = res.output.strip()
    assert len(msg.splitlines()) == 1, msg
    return msg


ENCODINGS = {
    # name: (bytes of the file, row named, words in the message)
    "latin1_row2": (json.dumps(GOOD).encode() + b'\n{"id": "b", "prompt": "caf\xe9?", "answer": "2", '
                    b'"source": "add"}\n', "row 2", "byte 0xe9 at column 27"),
    "utf16_bom": ((json.dumps(GOOD) + "\n").encode("utf-16"), "row 1", "UTF-16"),
    "utf16_no_bom": ((json.dumps(GOOD) + "\n").encode("utf-16-le"), "row 1", "UTF-16"),
}


@pytest.mark.parametrize("flag", ["--pool", "--target"])
@pytest.mark.parametrize("case", sorted(ENCODINGS))
def test_data_file_not_utf8(tmp_path: Path, case: str, flag: str) -> None:
    raw, where, words = ENCODINGS[case]
    (tmp_path / "bad.jsonl").write_bytes(raw)
    good = _jsonl(tmp_path / "good.jsonl", [GOOD])
    files = {"--pool": str(good), "--target": f"t={good}"}
    files[flag] = str(tmp_path / "bad.jsonl") if flag == "--pool" else f"t={tmp_path / 'bad.jsonl'}"
    res = CliRunner().invoke(app, ["rollout", "--pool", files["--pool"], "--target", files["--target"],
                                   "--out-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2, res.output
    msg = _one_line(res)
    assert "bad.jsonl" in msg and where in msg and words in msg and "save the file as UTF-8" in msg
    assert not (tmp_path / "runs").exists()


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    from cropi.data.io import load_prompts

    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n")
    assert [r.id for r in load_prompts(tmp_path / "bom.jsonl")] == ["a"]


def test_test_file_not_utf8(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "bad.jsonl").write_bytes((json.dumps(GOOD) + "\n").encode("utf-16"))
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--test",
                                   f"held={tmp_path / 'bad.jsonl'}", "--output", str(out)])
    assert res.exit_code == 2, res.output
    msg = _one_line(res)
    assert "bad.jsonl" in msg and "row 1" in msg and "UTF-16" in msg
    assert not out.exists()


def test_yaml_config_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes("name: test\nout_dir: caf\u00e9\n".encode("latin-1"))
    res = CliRunner().invoke(app, ["rollout", str(cfg)])
    assert res.exit_code == 2, res.output
    msg = _one_line(res)
    assert "run.yaml" in msg and "line 2, column 13" in msg and "save the file as UTF-8" in msg
    cfg.write_bytes("name: test\n".encode("utf-16"))
    res = CliRunner().invoke(app, ["rollout", str(cfg)])
    assert res.exit_code == 2 and "run.yaml" in _one_line(res) and "UTF-16" in res.output


# --- prompts too long for the data layer or for the model ---------------------------------------
def test_prompt_over_char_limit(tmp_path: Path) -> None:
    pool = _jsonl(tmp_path / "pool.jsonl", [GOOD, {**GOOD, "id": "b", "prompt": "x" * 5_000_000}])
    target = _jsonl(tmp_path / "t.jsonl", [GOOD])
    res = CliRunner().invoke(app, ["rollout", "--pool", str(pool), "--target", f"t={target}",
                                   "--out-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2, res.output
    msg = _one_line(res)
    assert "pool.jsonl" in msg and "row 2" in msg and "field 'prompt'" in msg
    assert "5,000,000 characters" in msg and "data.max_prompt_chars" in msg
    assert not (tmp_path / "runs").exists()


def test_char_limit_is_a_config_key(tmp_path: Path) -> None:
    from cropi.config import DataConfig
    from cropi.data.io import load_prompts
    from cropi.data.sets import load_sets
    from cropi.utils.errors import CropiError

    pool = _jsonl(tmp_path / "pool.jsonl", [{**GOOD, "prompt": "x" * 60}])
    with pytest.raises(CropiError, match="over the limit of 50"):
        load_prompts(pool, max_chars=50)
    assert len(load_prompts(pool, max_chars=100)) == 1
    data = DataConfig(suite=None, pool=str(pool), targets={"t": str(pool)}, max_prompt_chars=50)
    with pytest.raises(CropiError, match="over the limit of 50.*data.max_prompt_chars=60"):
        load_sets(data)
    res = CliRunner().invoke(app, ["config", "--set", "data.max_prompt_chars=0"])
    assert res.exit_code == 2 and "data.max_prompt_chars" in res.output


LONG = {**GOOD, "id": "long", "prompt": "word " * 1500}  # ~1.5k tokens: over the tiny model's 1024


def test_prompt_over_model_context_rollout(tmp_path: Path, tiny_model_dir: Path) -> None:
    pool = _jsonl(tmp_path / "pool.jsonl", [GOOD, LONG])
    target = _jsonl(tmp_path / "t.jsonl", [GOOD])
    res = CliRunner().invoke(app, ["rollout", "--pool", str(pool), "--target", f"t={target}",
                                   "--model", str(tiny_model_dir), "--k-pool", "2", "--k-target", "2",
                                   "--max-new-tokens", "2", "--out-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2, res.output
    msg = _one_line(res)
    assert "pool.jsonl" in msg and "row 2" in msg and "field 'prompt'" in msg
    assert "context of 1,024 tokens" in msg and "rollout.max_new_tokens=2" in msg
    assert not (tmp_path / "runs" / "cropi" / "rollouts").exists()  # nothing sampled or written


def test_prompt_plus_response_over_model_context_eval(tmp_path: Path, tiny_model_dir: Path) -> None:
    # fits on its own (~600 tokens), not with 500 response tokens
    test = _jsonl(tmp_path / "held.jsonl", [GOOD, GOOD | {"id": "b"}, {**LONG, "prompt": "word " * 600}])
    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(tiny_model_dir), "--test", f"held={test}", "--output", str(out),
            "--samples", "0"]
    res = CliRunner().invoke(app, [*args, "--max-new-tokens", "500"])
    assert res.exit_code == 2, res.output
    msg = _one_line(res)
    assert "held.jsonl" in msg and "row 3" in msg and "eval.max_new_tokens=500" in msg
    assert not out.exists()


def test_context_length() -> None:
    from types import SimpleNamespace

    from cropi.model.limits import context_length

    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=8192))
    assert context_length(SimpleNamespace(model_max_length=int(1e30)), model) == 8192
    assert context_length(SimpleNamespace(model_max_length=2048), model) == 2048
    assert context_length(SimpleNamespace(model_max_length=2048)) == 2048
    assert context_length(SimpleNamespace(), SimpleNamespace(config=SimpleNamespace(n_positions=1024))) == 1024
    assert context_length(SimpleNamespace(model_max_length=int(1e30))) is None


# --- run directories in a state a command cannot continue from ----------------------------------
@pytest.fixture(scope="module")
def rolled_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A run config (tiny model, 4 pool prompts) whose run directory holds beta's rollouts."""
    base = tmp_path_factory.mktemp("rolled")
    pool = _jsonl(base / "pool.jsonl", [{**GOOD, "id": f"p{i}", "prompt": f"What is {i}+1?"} for i in range(4)])
    target = _jsonl(base / "t.jsonl", [GOOD])
    cfg = base / "run.yaml"
    cfg.write_text(json.dumps({
        "name": "r", "out_dir": str(base / "runs"), "model": {"path": str(tiny_model_dir)},
        "data": {"suite": None, "pool": str(pool), "targets": {"t": str(target)},
                 "tests": {"held": str(target)}},
        "rollout": {"k_pool": 2, "k_target": 2, "max_new_tokens": 2, "batch_size": 8},
        "eval": {"samples": 0, "max_new_tokens": 2}, "curriculum": {"tensorboard": False},
    }))  # JSON is YAML
    res = CliRunner().invoke(app, ["rollout", str(cfg)])
    assert res.exit_code == 0, res.output
    return cfg


def _copy_run(cfg: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(cfg.parent / "runs", tmp_path / "runs")
    return tmp_path / "runs"


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("stage,needles", [
    (1, ["stage_000/checkpoint", "stage 0 has no checkpoint", "cropi run", "--stage 0"]),
    (5, ["runs/r", "stage 5 is not a stage", "curriculum.stages=2"]),
    (-1, ["runs/r", "stage -1 is not a stage"]),
])
def test_score_stage_without_checkpoint(rolled_run: Path, tmp_path: Path, stage: int,
                                        needles: list[str]) -> None:
    runs = _copy_run(rolled_run, tmp_path)
    before = _files(runs)
    res = CliRunner().invoke(app, ["score", str(rolled_run), "--out-dir", str(runs), "--stage", str(stage)])
    assert res.exit_code == 2, res.output
    msg = _one_line(res)
    assert all(n in msg for n in needles), msg
    assert _files(runs) == before  # no stage folder, no features


def test_select_without_rollouts(rolled_run: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["select", str(rolled_run), "--out-dir", str(tmp_path / "runs"),
                                   "--policy", "random"])
    assert res.exit_code == 2, res.output
    msg = _one_line(res)
    assert "runs/r/rollouts/pool" in msg and "cropi rollout" in msg
    root = tmp_path / "runs" / "r"
    assert not (root / "stages").exists() and not (root / "rollouts").exists()


def test_select_stage_without_scores(rolled_run: Path, tmp_path: Path) -> None:
    runs = _copy_run(rolled_run, tmp_path)
    before = _files(runs)
    res = CliRunner().invoke(app, ["select", str(rolled_run), "--out-dir", str(runs), "--stage", "1"])
    assert res.exit_code == 2, res.output
    msg = _one_line(res)
    assert _files(runs) == before
    assert "stage_001/scores.parquet" in msg


def test_selection_names_id_not_in_pool(rolled_run: Path, tmp_path: Path) -> None:
    runs = _copy_run(rolled_run, tmp_path)
    args = [str(rolled_run), "--out-dir", str(runs), "--policy", "random", "--ratio", "0.5"]
    assert CliRunner().invoke(app, ["select", *args]).exit_code == 0
    sel = runs / "r" / "stages" / "stage_000" / "selection.json"
    data = json.loads(sel.read_text())
    data["ids"][1] = "not-in-pool"
    sel.write_text(json.dumps(data))
    from cropi.curriculum.rundir import RunDir

    RunDir(runs / "r").mark(0, "evaluated_beta")  # no step-0 evaluation: straight to training
    before = _files(runs)
    res = CliRunner().invoke(app, ["run", *args])
    assert res.exit_code == 2, res.output
    msg = _one_line(res)
    assert "stage_000/selection.json" in msg and "field 'ids'" in msg and "'not-in-pool'" in msg
    assert _files(runs) == before  # no checkpoint, no training folder
