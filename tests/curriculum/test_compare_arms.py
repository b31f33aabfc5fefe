"""The arms of `cropi compare`: cropi-paper fixes the paper's scorer; the oracle arm selects the
target families' pool prompts, records them in selection.json and reuses them on resume."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from cropi.config import RunConfig, ScoreConfig, SelectConfig
from cropi.curriculum.compare import arm_config, redundant_arms
from cropi.curriculum.names import arm_names
from cropi.curriculum.phases import Run
from cropi.curriculum.select_phase import phase_select, target_sources
from cropi.data.sets import DataSets
from cropi.select import read_selection

sys.path.insert(0, str(Path(__file__).parent))
from test_stage_modes import _config, beta_rollouts  # noqa: E402,F401  (a module fixture)


def test_arm_configs() -> None:
    cfg = RunConfig(score=ScoreConfig(scorer="differential", scorer_options={"reduce": "max"}))
    assert {"cropi", "cropi-paper", "influence-once", "full", "random", "oracle"} <= set(arm_names())
    paper = arm_config(cfg, "cropi-paper", 2)
    assert (paper.select.policy, paper.score.scorer, paper.score.scorer_options) == ("influence", "paper", {})
    cropi = arm_config(cfg, "cropi", 2)
    assert (cropi.select.policy, cropi.score.scorer, cropi.train.seed) == ("influence", "differential", 2)


def test_cropi_paper_is_redundant_only_when_it_would_repeat_cropi() -> None:
    arms = ["cropi", "cropi-paper", "full"]
    assert redundant_arms(RunConfig(score=ScoreConfig(scorer="paper")), arms) == {"cropi-paper": "cropi"}
    assert redundant_arms(RunConfig(score=ScoreConfig(scorer="unitmean")), arms) == {}
    assert redundant_arms(RunConfig(score=ScoreConfig(scorer="paper", scorer_options={"x": 1})), arms) == {}
    assert redundant_arms(RunConfig(score=ScoreConfig(scorer="paper")), ["cropi-paper", "full"]) == {}


def _run(tmp_path: Path) -> tuple[Run, list]:
    # hand-made pool items carry no responses: the selection analysis is not what this tests
    run = Run(RunConfig(select=SelectConfig(analysis=False)), root=tmp_path / "oracle")
    run.sets = DataSets(pool=[], targets={"chain": [SimpleNamespace(source="cs1")] * 3,
                                                      "gcd": [SimpleNamespace(source="gcd20")]})
    pool = [SimpleNamespace(id=f"p{i}", pass_rate=p, source=s, level=None) for i, (s, p) in
            enumerate([("cs1", 0.5), ("add1", 0.5), ("cs1", 0.0), ("gcd20", 0.25)] * 5)]
    return run, pool


def test_oracle_selection_is_recorded_and_reused(tmp_path: Path) -> None:
    run, pool = _run(tmp_path)
    assert target_sources(run) == ["cs1", "gcd20"]
    ids = phase_select(run, 0, pool, "oracle")["ids"]  # budget 10 % of 20 = 2, both with a gradient
    by_id = {p.id: p for p in pool}
    assert len(ids) == 2 and all(by_id[i].source in ("cs1", "gcd20") and 0 < by_id[i].pass_rate < 1
                                 for i in ids)
    stored = read_selection(run.dir.selection(0))
    assert stored["policy"] == "oracle" and stored["target_sources"] == ["cs1", "gcd20"]
    assert phase_select(run, 0, pool, "oracle")["ids"] == ids  # resume: the stored selection
    other, _ = _run(tmp_path)
    other.sets = DataSets(pool=[], targets={"x": [SimpleNamespace(source="add1")]})
    with pytest.raises(Exception, match="made differently"):
        phase_select(other, 0, pool, "oracle")


def test_oracle_arm_through_run_compare(tiny_model_dir, beta_rollouts, tmp_path, monkeypatch):
    """Parity sets: pool families alpha and beta, target family alpha. The oracle arm selects
    alpha prompts only at both stages, trains on them, and reuses them when run again."""
    import cropi.curriculum.compare as compare
    import cropi.curriculum.loop as loop

    sets, rollouts = beta_rollouts
    root = tmp_path / "cmp"
    shutil.copytree(rollouts, root / "rollouts")
    cfg = _config(tiny_model_dir, sets, out_dir=str(tmp_path), name="cmp")
    trained = []
    monkeypatch.setattr(loop, "phase_train", lambda run, stage, ids: trained.append((stage, ids)))
    monkeypatch.setattr(loop, "phase_eval_initial", lambda run: None)
    compare.run_compare(cfg, ["oracle"], [0])
    run = root / "arms" / "oracle" / "seed_0"
    first = [read_selection(run / f"stages/stage_00{m}/selection.json") for m in (0, 1)]
    assert [s["policy"] for s in first] == ["oracle", "oracle"]
    assert first[0]["target_sources"] == ["alpha"]
    assert all(s["stats"]["source_mix"]["selected"] == {"alpha": 4} for s in first)
    assert trained == [(0, first[0]["ids"]), (1, first[1]["ids"])]
    compare.run_compare(cfg, ["oracle"], [0])  # resumed: the stored selections
    assert trained[2:] == trained[:2]
