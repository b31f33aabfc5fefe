"""cropi.bench.store: the resumable result store of benchmarks/acceleration.py. A report rebuilt
on another machine gets the comparison's runs and shared events (beta's rollouts, charged on the
wall-clock axis) back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cropi.bench.results import HEADER_KEYS, machine_kind
from cropi.bench.store import RunStore


def test_shared_events_survive_records_and_are_restored(tmp_path: Path) -> None:
    store = RunStore("acceleration_runs_t", tmp_path / "results")
    assert store.path == tmp_path / "results" / "acceleration_runs_t.json"
    assert store.load() == {} and store.runs() == {}
    root = tmp_path / "runs" / "cmp"
    root.mkdir(parents=True)
    events = [{"event": "rollouts", "seconds": 12.5, "sampled": {"pool": 4, "targets/a": 2}}]
    (root / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))

    store.save_shared(root)  # no file yet: nothing to keep the events in
    assert not store.path.exists()
    store.save_record("full", 0, {"format": 1, "arm": "full"})
    store.save_shared(root)
    store.save_record("oracle", 0, {"format": 1, "arm": "oracle"})  # keeps the shared events
    stored = json.loads(store.path.read_text())
    assert set(HEADER_KEYS) <= set(stored) and stored["benchmark"] == "acceleration_runs_t"
    assert stored["format"] == 1
    assert stored["shared_events"] == events
    kind = machine_kind()
    assert store.runs() == {"full": {"0": {"format": 1, "arm": "full", "machine": kind}},
                            "oracle": {"0": {"format": 1, "arm": "oracle", "machine": kind}}}

    fresh = tmp_path / "elsewhere" / "cmp"
    assert store.restore(fresh, [], []) == []
    lines = (fresh / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == events

    # an existing comparison keeps its own file
    (root / "metrics.jsonl").write_text(json.dumps({"event": "rollouts", "seconds": 1.0}) + "\n")
    store.restore(root, [], [])
    assert json.loads((root / "metrics.jsonl").read_text())["seconds"] == 1.0


def test_restore_names_the_runs_it_has_and_keeps_present_runs(tmp_path: Path,
                                                              monkeypatch) -> None:
    import cropi.bench.store as store_module

    restored = []
    monkeypatch.setattr(store_module, "restore_run", lambda rec, run: restored.append((rec["arm"], run)))
    store = RunStore("s", tmp_path)
    store.save_record("full", 0, {"arm": "full"})
    store.save_record("full", 1, {"arm": "full"})
    store.save_record("cropi", 1, {"arm": "cropi"})
    root = tmp_path / "cmp"
    present = root / "arms" / "full" / "seed_1"
    present.mkdir(parents=True)
    (present / "metrics.jsonl").write_text("{}\n")
    done = store.restore(root, ["cropi", "full", "random"], [0, 1])
    assert done == ["cropi/1", "full/0", "full/1"]  # arms outer, seeds inner; random has none
    assert restored == [("cropi", root / "arms" / "cropi" / "seed_1"),
                        ("full", root / "arms" / "full" / "seed_0")]  # full/1 is present
    assert not (root / "metrics.jsonl").exists()  # no shared events stored


def test_runs_from_a_cpu_with_other_bf16_support_are_refused(tmp_path: Path, monkeypatch) -> None:
    import cropi.bench.store as store_module
    from cropi.utils.errors import CropiError

    native = {"cpu_model": "x", "cpu_capability": "AVX512", "bf16_native": True}
    emulated = {"cpu_model": "y", "cpu_capability": "AVX2", "bf16_native": False}
    store = RunStore("s", tmp_path)
    store.check_machine()  # an empty store takes any machine
    store.save_record("legacy", 0, {"arm": "legacy"})
    data = store.load()
    del data["runs"]["legacy"]["0"]["machine"]  # as the records written before the stamp
    store.path.write_text(json.dumps(data))
    monkeypatch.setattr(store_module, "machine_kind", lambda: native)
    store.check_machine()  # a record from before the stamp is not checked
    store.save_record("cropi", 0, {"arm": "cropi"})
    assert store.runs()["cropi"]["0"]["machine"] == native
    monkeypatch.setattr(store_module, "machine_kind", lambda: {**native, "cpu_model": "z"})
    store.check_machine()  # same bf16 support: the same dtypes
    monkeypatch.setattr(store_module, "machine_kind", lambda: emulated)
    with pytest.raises(CropiError, match=r"runs\.cropi\.0\.machine\.bf16_native.*AVX512.*AVX2"):
        store.check_machine()
    auto = {"rollout.dtype": "auto", "train.generation_dtype": "fp32", "gradient.autocast_bf16": False}
    with pytest.raises(CropiError, match=r"rollout\.dtype bf16 there, fp32 here"):
        store.check_machine(auto)  # one setting left auto is enough to differ
    store.check_machine({**auto, "rollout.dtype": "fp32"})  # every dtype fixed: any CPU computes alike
    with pytest.raises(CropiError, match=r"gradient\.autocast_bf16 bf16 there, fp32 here"):
        store.check_machine({**auto, "rollout.dtype": "fp32", "gradient.autocast_bf16": None})


def test_resolved_dtypes_follow_the_cpu_only_where_auto() -> None:
    from cropi.bench.store import dtype_settings, resolved_dtypes
    from cropi.config import RunConfig

    cfg = RunConfig()
    assert resolved_dtypes(dtype_settings(cfg), True) == dict.fromkeys(
        ("rollout.dtype", "train.generation_dtype", "gradient.autocast_bf16"), "bf16")
    assert set(resolved_dtypes(dtype_settings(cfg), False).values()) == {"fp32"}
    fixed = {"rollout.dtype": "bf16", "train.generation_dtype": "fp32", "gradient.autocast_bf16": True}
    assert resolved_dtypes(fixed, False) == resolved_dtypes(fixed, True) == {
        "rollout.dtype": "bf16", "train.generation_dtype": "fp32", "gradient.autocast_bf16": "bf16"}

