"""Files cut short or damaged are found: one line naming the file and the fix, or computed again
with a message; never a traceback, never silently trusted (issue 23, deliverable 3). And
`cropi verify` (cropi.api.verify_run) reports what a rerun would compute again."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import files_under, run_cli, same_table, score_args

from cropi.curriculum.rundir import RunDir
from cropi.curriculum.verify import verify_run
from cropi.influence.features import DamagedRows, FeatureStore
from cropi.influence.scores import read_scores, score_table, write_scores
from cropi.influence.store_format import array_size
from cropi.rollout import store as rstore
from cropi.utils.errors import CropiError
from cropi.utils.io import DamagedFile

SPEC = {"test": 1}
IDS = [f"p{i}" for i in range(10)]


def _store(path: Path, complete: bool = True) -> FeatureStore:
    store = FeatureStore.open(path, IDS, 32, "fp16", SPEC)
    rng = np.random.default_rng(0)
    store.write(IDS, rng.normal(size=(10, 32)), [i in (3, 8) for i in range(10)])
    if complete:
        store.finalize()
    return store


def _flip(path: Path, offset_from_end: int) -> None:
    """Change one byte, keeping the size (a damage a size check cannot see)."""
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x5A
    path.write_bytes(bytes(data))


def _one_line(exc: BaseException) -> str:
    assert "\n" not in str(exc)
    return str(exc)


def test_a_damaged_row_is_computed_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _store(tmp_path / "pool").close()
    _flip(tmp_path / "pool" / "features.npy", 40)  # inside the last row
    with pytest.raises(DamagedRows) as err:  # a reader is told
        list(FeatureStore.load(tmp_path / "pool").chunks())
    assert "1 of 10 rows do not match their checksums" in _one_line(err.value)
    assert err.value.rows.tolist() == [9]
    with caplog.at_level(logging.WARNING):
        store = FeatureStore.open(tmp_path / "pool", IDS, 32, "fp16", SPEC)  # a writer recomputes
    assert "1 of 10 done rows do not match their checksums (damaged): computing them again" in caplog.text
    assert store.pending() == ["p9"] and not store.is_complete
    store.write(["p9"], np.ones((1, 32)), [False])
    store.finalize()
    assert FeatureStore.load(tmp_path / "pool").damaged_rows().size == 0


def test_repairing_a_linked_store_leaves_the_other_run_alone(tmp_path: Path) -> None:
    _store(tmp_path / "a").close()
    (tmp_path / "b").mkdir()
    for f in (tmp_path / "a").iterdir():
        os.link(f, tmp_path / "b" / f.name)  # as cropi compare shares stage-0 features
    _flip(tmp_path / "b" / "features.npy", 40)
    store = FeatureStore.open(tmp_path / "b", IDS, 32, "fp16", SPEC)
    assert store.pending() == ["p9"]
    assert (tmp_path / "b" / "done.npy").stat().st_nlink == 1
    assert FeatureStore.load(tmp_path / "a").n_done() == 10  # its flags and manifest are untouched


@pytest.mark.parametrize("name", ["features.npy", "done.npy", "zero.npy", "check.npy", "spec.json", "ids.json",
                                  "manifest.json"])
def test_a_store_file_cut_short(tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    """Read-only: one line naming the file. Reopened to write: a JSON file is one line; an array
    cut short is said, and the rows it lost are computed again."""
    _store(tmp_path / "pool").close()
    path = tmp_path / "pool" / name
    size = path.stat().st_size
    keep = size * 3 // 4 if name.endswith(".json") else size - (size - array_size(path)[0]) // 2
    path.write_bytes(path.read_bytes()[:keep])  # an array keeps its header and half its rows
    if name != "spec.json":  # a reader does not need the spec
        with pytest.raises(CropiError) as err:
            FeatureStore.load(tmp_path / "pool")
        text = _one_line(err.value)
        assert str(path) in text and "damaged or cut short" in text and "rerun the scoring step" in text
    if name.endswith(".json"):
        if name != "manifest.json":
            with pytest.raises(CropiError) as err:
                FeatureStore.open(tmp_path / "pool", IDS, 32, "fp16", SPEC)
            assert str(path) in _one_line(err.value)
        return
    with caplog.at_level(logging.WARNING):
        store = FeatureStore.open(tmp_path / "pool", IDS, 32, "fp16", SPEC)
    assert f"{path} is cut short" in caplog.text or "do not match their checksums" in caplog.text
    lost = store.pending()
    assert lost == ["p8"] if name == "zero.npy" else lost[-1] == "p9"  # the zero flag of p8 was lost
    assert not store.is_complete
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(10, 32))
    store.write(lost, rows[[IDS.index(i) for i in lost]], [i in ("p3", "p8") for i in lost])
    store.finalize()
    ref = _store(tmp_path / "ref")
    assert (tmp_path / "pool" / "features.npy").read_bytes() == (tmp_path / "ref" / "features.npy").read_bytes()
    assert np.array_equal(FeatureStore.load(tmp_path / "pool").zero, ref.zero)


def test_a_store_without_checksums_gets_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = _store(tmp_path / "pool", complete=False)
    store.close()
    (tmp_path / "pool" / "check.npy").unlink()  # as a store of an earlier cropi version
    with caplog.at_level(logging.INFO):
        store = FeatureStore.open(tmp_path / "pool", IDS, 32, "fp16", SPEC)
    assert "added row checksums" in caplog.text and store.pending() == []
    assert store.damaged_rows().size == 0


def _rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"p{i}", "source": "s", "level": None, "prompt_ids": [1, 2], "response_ids": [[3], [4]],
             "response_text": ["a", "b"], "rewards": [1.0, 0.0], "logprobs": [[-0.5], [-0.25]],
             "pass_rate": 0.5, "n_tokens": 2, "sampling": "all"} for i in range(start, start + n)]


def test_a_damaged_part_is_sampled_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rstore.prepare_dir(tmp_path, SPEC)
    for c in range(3):
        rstore.write_part(tmp_path, c, _rows(2, 2 * c))
    _flip(rstore.part_path(tmp_path, 1), 30)
    rstore.part_path(tmp_path, 2).write_bytes(rstore.part_path(tmp_path, 2).read_bytes()[:50])
    with caplog.at_level(logging.WARNING):
        rstore.prepare_dir(tmp_path, SPEC)  # what a resumed `cropi rollout` does first
    assert "part-00001.parquet: content differs from its SHA-256 (damaged or cut short): sampling that chunk again" \
        in caplog.text
    assert "part-00002.parquet: 50 bytes, expected" in caplog.text
    assert [p.name for p in sorted((tmp_path / "parts").glob("*.parquet"))] == ["part-00000.parquet"]


def test_a_damaged_merged_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rstore.prepare_dir(tmp_path, SPEC)
    for c in range(2):
        rstore.write_part(tmp_path, c, _rows(2, 2 * c))
    rstore.finalize(tmp_path, 2, {})
    assert rstore.is_complete(tmp_path) and len(rstore.load_rollouts(tmp_path)) == 4
    path = tmp_path / "rollouts.parquet"
    path.write_bytes(path.read_bytes()[:-100])  # an interrupted copy
    assert not rstore.is_complete(tmp_path)
    with pytest.raises(DamagedFile) as err:  # a reader stops with one line
        rstore.load_rollouts(tmp_path)
    text = _one_line(err.value)
    assert str(path) in text and "bytes, expected" in text and "samples the set again" in text
    with caplog.at_level(logging.WARNING):
        rstore.prepare_dir(tmp_path, SPEC)  # a writer drops it, to sample the set again
    assert "sampling the set again" in caplog.text
    assert files_under(tmp_path) == ["spec.json"]


def test_a_damaged_score_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = RunDir(tmp_path / "run")
    path = run.scores(0)
    write_scores(path, score_table(["a", "b"], {"t": np.array([0.5, np.nan])}, [0.5, 1.0], ["s", "s"], [None, None]))
    run.mark(0, "scored")
    run.release()
    assert run.done(0, "scored")
    read_scores(path)
    _flip(path, 200)
    with pytest.raises(DamagedFile) as err:
        read_scores(path)
    assert "content differs from its SHA-256" in _one_line(err.value) and "`cropi score`" in str(err.value)
    with caplog.at_level(logging.WARNING):
        assert not run.done(0, "scored")  # so the score phase runs again
    assert "computing the phase again" in caplog.text
    path.write_bytes(b"PAR1 not a table")
    (tmp_path / "run" / "stages" / "stage_000" / "state.json").write_text("{")
    with pytest.raises(DamagedFile) as err:  # no record to compare with: the reader's own error
        read_scores(path)
    assert "cannot be read" in _one_line(err.value)
    with pytest.raises(DamagedFile) as err:
        run.state(0)
    assert "state.json" in _one_line(err.value) and "phases are computed again" in str(err.value)


def test_verify_reports_what_it_would_recompute(tmp_path: Path) -> None:
    root = tmp_path / "run"
    (root / "rollouts" / "pool").mkdir(parents=True)
    rstore.prepare_dir(root / "rollouts" / "pool", SPEC)
    rstore.write_part(root / "rollouts" / "pool", 0, _rows(2))
    rstore.finalize(root / "rollouts" / "pool", 1, {})
    _store(root / "stages" / "stage_000" / "features" / "pool").close()
    (root / "metrics.jsonl").write_text('{"event": "x"}\n{"event": "sc')
    assert verify_run(root).ok
    _flip(root / "stages" / "stage_000" / "features" / "pool" / "features.npy", 40)
    (root / "rollouts" / "pool" / "rollouts.parquet").write_bytes(b"")
    (root / "stages" / "stage_000" / ".tmp-state.json.x").write_text("")
    check = verify_run(root)
    assert not check.ok
    by_kind = {(f.kind, Path(f.path).name) for f in check.findings}
    assert ("recompute", "rollouts.parquet") in by_kind and ("recompute", "features.npy") in by_kind
    assert ("note", "metrics.jsonl") in by_kind and ("note", ".tmp-state.json.x") in by_kind
    text = json.dumps(check.as_dict())
    assert "1 of 10 rows do not match their checksums" in text and "samples pool again" in text
    # read-only: nothing changed
    assert (root / "stages" / "stage_000" / ".tmp-state.json.x").exists()
    assert (root / "stages" / "stage_000" / "features" / "pool" / "manifest.json").exists()


# --------------------------------------------------------------------------------- the CLI
def test_cli_finds_damage_on_resume(tiny_model_dir: Path, gated_sets: dict[str, Path], tmp_path: Path) -> None:
    """Acceptance: a cut-short rollout file, a damaged feature file and score table found on
    resume: one line and exit 2 from a reader, recomputed with a message by a writer; the result
    equals a clean run; `cropi verify` says what it would redo before, and nothing after."""
    args = score_args(tiny_model_dir, gated_sets, tmp_path / "runs")
    first = run_cli(args)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "x"
    ref = tmp_path / "ref"
    import shutil

    shutil.copytree(run, ref)
    rollouts = run / "rollouts" / "pool" / "rollouts.parquet"
    rollouts.write_bytes(rollouts.read_bytes()[:-64])
    _flip(run / "stages/stage_000/features/pool/features.npy", 100)
    _flip(run / "stages/stage_000/scores.parquet", 300)

    verify = run_cli(["verify", "x", "--out-dir", str(tmp_path / "runs")])
    assert verify.returncode == 1, verify.stdout + verify.stderr
    out = " ".join(verify.stdout.split())
    assert "rollouts.parquet" in out and "features.npy" in out and "scores.parquet" in out
    select = run_cli(["select", "--name", "x", "--out-dir", str(tmp_path / "runs")])
    assert select.returncode == 2 and "Traceback" not in select.stderr, select.stderr
    lines = [line for line in select.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "rollouts.parquet" in lines[0] and "samples the set again" in lines[0]

    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    said = " ".join(again.stderr.split())
    assert "sampling the set again" in said and "scores.parquet" in said and "computing the phase again" in said
    assert "do not match their checksums (damaged): computing them again" in said
    assert (rollouts.read_bytes() == (ref / "rollouts/pool/rollouts.parquet").read_bytes())
    feats = "stages/stage_000/features/pool/features.npy"
    assert (run / feats).read_bytes() == (ref / feats).read_bytes()
    assert same_table(run / "stages/stage_000/scores.parquet", ref / "stages/stage_000/scores.parquet")
    assert run_cli(["verify", str(run)]).returncode == 0
