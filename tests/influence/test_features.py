"""Feature store: create, resume, spec checks, overwrite, sharding, kill -9 safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cropi.influence.features import FeatureStore
from cropi.influence.shards import merge_stores, shard_ids
from cropi.influence.store_format import bytes_per_prompt, spec_diff, store_bytes
from cropi.utils.errors import CropiError

REPO = Path(__file__).resolve().parents[2]
K = 16
SPEC = {"model": "abc123", "projection": {"kind": "countsketch", "k": K, "seed": 0}, "stage": 0}


def feature_row(id_: str, k: int = K) -> np.ndarray:
    """Deterministic features of one id: row = f(id)."""
    seed = int.from_bytes(id_.encode(), "little") % (2**32)
    return np.random.default_rng(seed).standard_normal(k).astype(np.float32)


def is_zero(id_: str) -> bool:
    return id_.endswith("3")


def make_ids(n: int) -> list[str]:
    return [f"p{i:04d}" for i in range(n)]


def write_all(store: FeatureStore, ids: list[str], batch: int = 5) -> None:
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        store.write(chunk, np.stack([feature_row(i) for i in chunk]), [is_zero(i) for i in chunk])


def full_store(path: Path, ids: list[str], dtype: str = "fp16") -> FeatureStore:
    store = FeatureStore.open(path, ids, K, dtype, SPEC)
    write_all(store, store.pending())
    store.finalize()
    return store


def expected(ids: list[str], dtype: str) -> np.ndarray:
    rows = np.stack([feature_row(i) for i in ids]).astype(dtype)
    rows[[is_zero(i) for i in ids]] = 0
    return rows.astype(np.float32)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_write_finalize_read(tmp_path: Path, dtype: str) -> None:
    ids = make_ids(23)
    store = FeatureStore.open(tmp_path / "s", ids, K, dtype, SPEC)
    assert store.pending() == ids and not store.is_complete
    write_all(store, ids)
    assert store.pending() == []
    assert not (tmp_path / "s" / "manifest.json").exists()  # only finalize writes it
    with pytest.raises(CropiError, match="incomplete"):
        store.read()
    store.finalize()
    assert store.is_complete
    got_ids, feats, zero = FeatureStore.load(tmp_path / "s").read()
    assert got_ids == ids and feats.dtype == np.float32 and feats.shape == (23, K)
    np.testing.assert_array_equal(feats, expected(ids, "float16" if dtype == "fp16" else "float32"))
    np.testing.assert_array_equal(zero, [is_zero(i) for i in ids])
    assert np.load(tmp_path / "s" / "features.npy").dtype == np.dtype(dtype.replace("fp", "float"))
    manifest = __import__("json").loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["counts"] == {"done": 23, "zero": sum(map(is_zero, ids))}
    assert manifest["spec"] == SPEC and manifest["k"] == K and manifest["dtype"] == dtype


def test_finalize_refuses_pending_and_load_refuses_incomplete(tmp_path: Path) -> None:
    ids = make_ids(6)
    store = FeatureStore.open(tmp_path, ids, K, "fp16", SPEC)
    write_all(store, ids[:3])
    with pytest.raises(CropiError, match="3 of 6"):
        store.finalize()
    with pytest.raises(CropiError, match="manifest.json is missing"):
        FeatureStore.load(tmp_path)


def test_resume_after_partial_write(tmp_path: Path) -> None:
    ids = make_ids(20)
    store = FeatureStore.open(tmp_path, ids, K, "fp16", SPEC)
    write_all(store, ids[:7])
    # a row written without its done flag (killed between the two flushes) must be redone
    store._features[9] = 7.0
    store._features.flush()
    del store
    reopened = FeatureStore.open(tmp_path, ids, K, "fp16", SPEC)
    assert reopened.pending() == ids[7:]
    write_all(reopened, reopened.pending())
    reopened.finalize()
    np.testing.assert_array_equal(reopened.read()[1], full_store(tmp_path / "ref", ids).read()[1])


def test_spec_mismatch_prints_both_specs(tmp_path: Path) -> None:
    ids = make_ids(4)
    FeatureStore.open(tmp_path, ids, K, "fp16", SPEC)
    other = {**SPEC, "model": "zzz999"}
    with pytest.raises(CropiError) as err:
        FeatureStore.open(tmp_path, ids, K, "fp16", other)
    text = str(err.value)
    assert "abc123" in text and "zzz999" in text and "--overwrite" in text
    assert text.index("spec.model") < text.index("Stored spec")  # differing keys first
    with pytest.raises(CropiError, match="dtype"):
        FeatureStore.open(tmp_path, ids, K, "fp32", SPEC)
    with pytest.raises(CropiError, match="prompt ids"):
        FeatureStore.open(tmp_path, ids[::-1], K, "fp16", SPEC)
    assert spec_diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ["a.c", "d"]


def test_overwrite_recreates(tmp_path: Path) -> None:
    ids = make_ids(5)
    full_store(tmp_path, ids)
    other = {**SPEC, "stage": 1}
    store = FeatureStore.open(tmp_path, ids[:3], K, "fp32", other, overwrite=True)
    assert store.pending() == ids[:3] and not store.is_complete
    assert store.spec == other and np.load(tmp_path / "features.npy").shape == (3, K)


def test_reopen_complete_store_and_write_refused(tmp_path: Path) -> None:
    ids = make_ids(5)
    full_store(tmp_path, ids)
    store = FeatureStore.open(tmp_path, ids, K, "fp16", SPEC)
    assert store.is_complete and store.pending() == []
    with pytest.raises(CropiError, match="finalized"):
        store.write(ids[:1], np.zeros((1, K)), [False])


def test_write_validation(tmp_path: Path) -> None:
    ids = make_ids(4)
    store = FeatureStore.open(tmp_path, ids, K, "fp16", SPEC)
    with pytest.raises(CropiError, match="not in this feature store"):
        store.write(["nope"], np.zeros((1, K)), [False])
    with pytest.raises(CropiError, match="expected"):
        store.write(ids[:2], np.zeros((2, K + 1)), [False, False])
    with pytest.raises(CropiError, match="store_dtype=fp32"):
        store.write(ids[:1], np.full((1, K), 1e6), [False])
    with pytest.raises(CropiError, match="non-finite"):
        store.write(ids[:1], np.full((1, K), np.nan), [False])
    with pytest.raises(CropiError, match="twice"):
        store.write([ids[0], ids[0]], np.zeros((2, K)), [False, False])
    assert store.pending() == ids
    with pytest.raises(CropiError, match="more than once"):
        FeatureStore.open(tmp_path / "dup", ["a", "a"], K, "fp16", SPEC)


def test_shard_ids_contiguous_cover() -> None:
    ids = make_ids(10)
    shards = [shard_ids(ids, 3, i) for i in range(3)]
    assert [len(s) for s in shards] == [4, 3, 3]
    assert sum(shards, []) == ids
    assert shard_ids(ids[:2], 4, 3) == []
    with pytest.raises(CropiError):
        shard_ids(ids, 3, 3)


@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_shard_and_merge_equals_unsharded(tmp_path: Path, dtype: str) -> None:
    ids = make_ids(17)
    ref = full_store(tmp_path / "ref", ids, dtype)
    paths = []
    for i in range(3):
        path = tmp_path / f"shard{i}"
        shard = FeatureStore.open(path, shard_ids(ids, 3, i), K, dtype, SPEC)
        write_all(shard, shard.pending(), batch=4)
        shard.finalize()
        paths.append(path)
    merged = merge_stores(paths[::-1], tmp_path / "merged", ids, SPEC)  # shard order is irrelevant
    assert merged.is_complete and merged.ids == ids
    for name in ("features.npy", "zero.npy", "done.npy", "ids.json"):
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    np.testing.assert_array_equal(merged.read()[1], ref.read()[1])


def test_merge_checks(tmp_path: Path) -> None:
    ids = make_ids(6)
    a = full_store(tmp_path / "a", ids[:3])
    full_store(tmp_path / "b", ids[2:])
    with pytest.raises(CropiError, match="two shards"):
        merge_stores([a.path, tmp_path / "b"], tmp_path / "m", ids, SPEC)
    with pytest.raises(CropiError, match="1 missing"):
        merge_stores([a.path, tmp_path / "b"][:1] + [full_store(tmp_path / "c", ids[3:5]).path],
                     tmp_path / "m", ids, SPEC)
    with pytest.raises(CropiError, match="zzz"):
        merge_stores([a.path], tmp_path / "m", ids[:3], {**SPEC, "model": "zzz"})
    partial = FeatureStore.open(tmp_path / "p", ids[3:], K, "fp16", SPEC)
    with pytest.raises(CropiError, match="manifest.json is missing"):
        merge_stores([a.path, partial.path], tmp_path / "m", ids, SPEC)


def test_storage_math() -> None:
    assert bytes_per_prompt(8192, "fp16") == 16 * 1024
    assert bytes_per_prompt(8192, np.float32) == 32 * 1024
    assert store_bytes(10, 8192, "fp16") == 10 * 16 * 1024


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_features import K, SPEC, feature_row, is_zero, make_ids
    from cropi.influence.features import FeatureStore
    ids = make_ids({n})
    store = FeatureStore.open({path!r}, ids, K, "fp16", SPEC)
    for start in range(0, len(ids), 2):
        chunk = ids[start:start + 2]
        store.write(chunk, np.stack([feature_row(i) for i in chunk]), [is_zero(i) for i in chunk])
        print(start, flush=True)
        if start == 2 * ({batches} - 1):
            sys.stdin.readline()  # wait here for the kill: never finishes before it
    store.finalize()
""")


def test_kill9_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    n = 400
    ids = make_ids(n)
    batches = 20
    script = CHILD.format(tests=str(Path(__file__).parent), n=n, path=str(tmp_path / "s"), batches=batches)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the child writes 20 batches and then blocks on its stdin, so the kill always lands mid-way
    # through the store, however slow this machine is (it used to race the child's last batches)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, text=True)
    assert proc.stdout is not None
    for _ in range(batches):
        assert proc.stdout.readline(), "child exited early"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store = FeatureStore.open(tmp_path / "s", ids, K, "fp16", SPEC)
    assert not store.is_complete
    pending = store.pending()
    assert pending == ids[2 * batches:]  # resume continues where it stopped
    write_all(store, pending)
    store.finalize()
    ref = full_store(tmp_path / "ref", ids)
    assert (tmp_path / "s" / "features.npy").read_bytes() == (tmp_path / "ref" / "features.npy").read_bytes()
    np.testing.assert_array_equal(store.read()[2], ref.read()[2])
