"""A full disk at every writer is one line ("needs X MB in DIR, Y MB free" or "the disk is full in
DIR"), exit 2 in the CLI, and nothing half-written is kept or counted as done: ENOSPC injected at
each writer, and a real full disk on a small tmpfs where this sandbox can mount one."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from reliability_helpers import ROOT, files_under, run_cli, same_table, score_args

import cropi.utils.io as io
from cropi.influence.features import FeatureStore
from cropi.influence.store_format import store_bytes
from cropi.rollout import store as rstore
from cropi.utils.io import DiskFull, append_line, atomic_write_json

SPEC = {"test": 1}


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_atomic_json_on_a_full_disk_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    atomic_write_json(path, {"a": 1})
    monkeypatch.setattr(Path, "write_text", _enospc)
    with pytest.raises(DiskFull) as err:
        atomic_write_json(path, {"a": 2})
    assert f"the disk is full in {tmp_path} writing state.json" in _one_line(err.value)
    assert "MB free" in str(err.value) and "rerun the same command" in str(err.value)
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


def test_a_metrics_line_cut_short_is_taken_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.jsonl"
    append_line(path, '{"event": "a"}')
    real = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 4:
            return real(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(DiskFull):
        append_line(path, '{"event": "b"}')
    monkeypatch.undo()
    assert path.read_text() == '{"event": "a"}\n'  # no partial line for the next append to run into
    append_line(path, '{"event": "c"}')
    assert path.read_text().splitlines() == ['{"event": "a"}', '{"event": "c"}']


def test_rollout_part_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"id": "p0", "source": "s", "level": None, "prompt_ids": [1], "response_ids": [[2]],
             "response_text": ["x"], "rewards": [1.0], "logprobs": [[-0.5]], "pass_rate": 1.0,
             "n_tokens": 1, "sampling": "all"}]
    # pyarrow's own error: an OSError whose text names the full disk
    monkeypatch.setattr(rstore.pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(
        OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")))
    with pytest.raises(DiskFull) as err:
        rstore.write_part(tmp_path, 0, rows)
    assert "the disk is full in" in _one_line(err.value) and "part-00000.parquet" in str(err.value)
    assert files_under(tmp_path) == ["parts"]  # no part, no record: the chunk is not done
    monkeypatch.undo()
    rstore.write_part(tmp_path, 0, rows)
    assert rstore.part_problem(rstore.part_path(tmp_path, 0)) is None


def test_rollout_merge_checks_the_space_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"id": f"p{i}", "source": "s", "level": None, "prompt_ids": [1], "response_ids": [[2]],
             "response_text": ["x"], "rewards": [1.0], "logprobs": [[-0.5]], "pass_rate": 1.0,
             "n_tokens": 1, "sampling": "all"} for i in range(2)]
    for c in range(2):
        rstore.write_part(tmp_path, c, rows[c:c + 1])
    monkeypatch.setattr(io, "free_bytes", lambda folder: 1000)
    with pytest.raises(DiskFull) as err:
        rstore.finalize(tmp_path, 2, {})
    assert f"MB in {tmp_path} for merging beta's rollouts" in _one_line(err.value)
    assert str(err.value).startswith("needs ") and "0.0 MB free" in str(err.value)
    assert not (tmp_path / "manifest.json").exists() and len(list((tmp_path / "parts").glob("*.parquet"))) == 2
    monkeypatch.undo()
    rstore.finalize(tmp_path, 2, {})
    assert rstore.is_complete(tmp_path)


def test_feature_store_needs_its_space_before_any_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(io, "free_bytes", lambda folder: 10_000)
    with pytest.raises(DiskFull) as err:
        FeatureStore.open(tmp_path / "pool", [f"p{i}" for i in range(100)], 1024, "fp16", SPEC)
    text = _one_line(err.value)
    assert text.startswith(f"needs 0.2 MB in {tmp_path / 'pool'} for the feature store of 100 prompts")
    assert "0.0 MB free" in text
    assert not (tmp_path / "pool" / "spec.json").exists()  # not even an empty store


def test_preallocation_failing_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    with pytest.raises(DiskFull) as err:
        FeatureStore.open(tmp_path / "pool", [f"p{i}" for i in range(100)], 1024, "fp16", SPEC)
    assert "features.npy" in _one_line(err.value) and str(err.value).startswith("needs ")
    assert not list((tmp_path / "pool").glob(".tmp-*")) and not (tmp_path / "pool" / "spec.json").exists()


def test_feature_rows_on_a_full_disk_are_not_marked_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [f"p{i}" for i in range(8)]
    store = FeatureStore.open(tmp_path / "pool", ids, 16, "fp16", SPEC)
    store.write(ids[:4], np.ones((4, 16)), [False] * 4)
    import cropi.influence.features as features

    monkeypatch.setattr(features.os, "pwrite", _enospc)
    with pytest.raises(DiskFull):
        store.write(ids[4:], np.ones((4, 16)), [False] * 4)
    monkeypatch.undo()
    assert store.pending() == ids[4:]  # the failed batch stays to compute
    store.write(ids[4:], np.full((4, 16), 2.0), [False] * 4)
    store.finalize()
    assert np.array_equal(FeatureStore.load(tmp_path / "pool").read()[1][4:], np.full((4, 16), 2.0))


class _Model(__import__("torch").nn.Linear):
    def save_pretrained(self, folder: str, safe_serialization: bool = True) -> None:
        (Path(folder) / "model.safetensors").write_bytes(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . file write failed")


def test_checkpoint_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from cropi.config import TrainConfig
    from cropi.train.grpo import _save_stage, checkpoint_bytes

    model = _Model(64, 64)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 64)).sum().backward()
    opt.step()
    trainer = SimpleNamespace(model=model, optimizer=opt, lr_scheduler=None)
    need = checkpoint_bytes(model, opt)
    assert need == 3 * 4 * (64 * 64 + 64) + 2 * 4 + 16 * 2**20  # weights, two moments, two steps
    out = tmp_path / "stage_000" / "checkpoint"
    out.parent.mkdir()
    monkeypatch.setattr(io, "free_bytes", lambda folder: 2**20)
    with pytest.raises(DiskFull) as err:  # checked before writing
        _save_stage(trainer, "unused", out, TrainConfig(), {})
    assert _one_line(err.value).startswith(f"needs 16.8 MB in {out.parent} for the stage checkpoint")
    free = iter([2**40, 0, 0, 0, 0])  # enough at first, then the disk fills up while writing
    monkeypatch.setattr(io, "free_bytes", lambda folder: next(free))
    with pytest.raises(DiskFull):
        _save_stage(trainer, "unused", out, TrainConfig(), {})
    assert files_under(out.parent) == []  # the staging folder is gone, no checkpoint


def test_report_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cropi.report import build_report

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"event": "eval", "stage": -1 if s == 0 else 0, "step": s, "targeted": 0.1 * s, "untargeted": 0.2,
         "metric": "greedy"}) + "\n" for s in (0, 1, 2)))
    monkeypatch.setattr(Path, "write_text", _enospc)
    with pytest.raises(DiskFull) as err:
        build_report(run)
    assert "the disk is full in" in _one_line(err.value)
    monkeypatch.undo()
    assert not list((run / "report").glob(".tmp-*"))
    assert not (run / "report" / "report.md").exists()


# ------------------------------------------------------------------ a real full disk (tmpfs)
@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs at tmp_path/disk (root only; the test is skipped where it cannot be mounted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip() or res.returncode})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until about ``leave`` bytes are free; returns the filler file."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def test_memmap_rows_after_the_disk_filled_up_land_in_the_preallocated_store(small_disk: Path) -> None:
    """Today's SIGBUS: a store created, then the disk filled up, then rows written. The store's
    space was taken at creation, so the writes succeed (in a subprocess: a SIGBUS would kill it)."""
    code = textwrap.dedent("""
        import sys, numpy as np
        from pathlib import Path
        from cropi.influence.features import FeatureStore
        disk = Path(sys.argv[1])
        ids = [f"p{i}" for i in range(64)]
        store = FeatureStore.open(disk / "pool", ids, 4096, "fp16", {"t": 1})
        with (disk / "filler").open("wb") as fh:   # the disk fills up meanwhile
            try:
                while True:
                    fh.write(b"\\0" * 65536)
            except OSError:
                pass
        store.write(ids, np.ones((64, 4096)), [False] * 64)  # into the space taken at creation
        assert store.n_done() == 64
        (disk / "filler").unlink()  # the manifest is a new file: it needs the space back
        store.finalize()
        print("ok", flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", code, str(small_disk)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
    feats = FeatureStore.load(small_disk / "pool").read()[1]
    assert feats.shape == (64, 4096) and float(feats.min()) == 1.0


def test_feature_store_on_a_full_tmpfs(small_disk: Path) -> None:
    filler = _fill(small_disk, 64 * 1024)
    ids = [f"p{i}" for i in range(64)]
    with pytest.raises(DiskFull) as err:
        FeatureStore.open(small_disk / "pool", ids, 4096, "fp16", SPEC)
    assert _one_line(err.value).startswith(f"needs {store_bytes(64, 4096) / 1e6:.1f} MB in {small_disk / 'pool'}")
    filler.unlink()
    store = FeatureStore.open(small_disk / "pool", ids, 4096, "fp16", SPEC)
    assert store.pending() == ids


def test_cropi_score_on_a_disk_that_fills_up(tiny_model_dir: Path, gated_sets: dict[str, Path], tmp_path: Path,
                                             small_disk: Path) -> None:
    """The acceptance: `cropi score` on a full disk exits 2 with one line saying how much it needs;
    after space is freed the rerun's scores equal a clean run's."""
    args = score_args(tiny_model_dir, gated_sets, small_disk) + ["--k", "8192"]
    rollout = run_cli(["rollout", *args[1:args.index("--k")]])  # the rollouts fit
    assert rollout.returncode == 0, rollout.stderr
    filler = _fill(small_disk, 96 * 1024)  # the pool's features (8 x 8192 fp16 = 128 KiB) do not
    res = run_cli(args)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("error: needs 0.1 MB in") and "MB free" in lines[0]
    filler.unlink()
    again = run_cli(args)
    assert again.returncode == 0, again.stderr
    clean = run_cli(score_args(tiny_model_dir, gated_sets, tmp_path / "clean") + ["--k", "8192"])
    assert clean.returncode == 0, clean.stderr
    score = "x/stages/stage_000/scores.parquet"
    assert same_table(small_disk / score, tmp_path / "clean" / score)
    assert pq.read_table(small_disk / score).num_rows == 8
