"""benchmarks/acceleration.py's result store: a report rebuilt on another machine gets the
comparison's shared events (beta's rollouts, charged on the wall-clock axis) back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture()
def acc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import _common
    import acceleration

    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(acceleration, "RESULTS", tmp_path / "results")
    yield acceleration
    sys.modules.pop("acceleration", None)


def test_shared_events_survive_records_and_are_restored(acc, tmp_path: Path) -> None:
    root = tmp_path / "runs" / "cmp"
    root.mkdir(parents=True)
    events = [{"event": "rollouts", "seconds": 12.5, "sampled": {"pool": 4, "targets/a": 2}}]
    (root / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))

    acc.save_record("t", "full", 0, {"format": 1, "arm": "full"})
    acc.save_shared("t", root)
    acc.save_record("t", "oracle", 0, {"format": 1, "arm": "oracle"})  # keeps the shared events
    stored = json.loads((tmp_path / "results" / "acceleration_runs_t.json").read_text())
    assert stored["shared_events"] == events
    assert set(stored["runs"]) == {"full", "oracle"}

    fresh = tmp_path / "elsewhere" / "cmp"
    assert acc._restore(fresh, "t", [], []) == []
    lines = (fresh / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == events

    # an existing comparison keeps its own file
    (root / "metrics.jsonl").write_text(json.dumps({"event": "rollouts", "seconds": 1.0}) + "\n")
    acc._restore(root, "t", [], [])
    assert json.loads((root / "metrics.jsonl").read_text())["seconds"] == 1.0
