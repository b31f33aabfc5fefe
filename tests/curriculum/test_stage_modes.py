"""Two stage variants on a tiny random model with the parity verifier of tests/e2e:

* ``gradient.mode=onpolicy`` scores fresh samples of the stage's model, written to
  RUN/stages/stage_NNN/onpolicy/, instead of beta's stored rollouts;
* the ``influence-once`` arm of ``cropi compare`` selects once at stage 0 and reuses that subset
  (no scoring at later stages).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cropi.config import (CurriculumConfig, DataConfig, EvalConfig, GradientConfig, ModelConfig,
                          ProjectionConfig, RolloutConfig, RunConfig, SelectConfig)
from cropi.curriculum.phases import Run, phase_rollouts
from cropi.influence.features import FeatureStore
from cropi.influence.pipeline import compute_features, prepare_scoring
from cropi.model.loading import load_model, load_tokenizer
from cropi.model.logprobs import response_logprobs
from cropi.rollout.store import load_rollouts
from cropi.select import read_selection

sys.path.insert(0, str(Path(__file__).parents[1] / "e2e"))
from parity_cli import write_parity_sets  # noqa: E402  (also registers the parity verifier)


def _config(model: Path, sets: dict[str, Path], mode: str = "offpolicy", out_dir: str = "unused",
            name: str = "r", autocast_bf16: bool | None = None) -> RunConfig:
    return RunConfig(
        name=name, out_dir=out_dir, model=ModelConfig(path=str(model), device="cpu"),
        data=DataConfig(suite=None, pool=str(sets["pool"]), targets={"a": str(sets["target"])},
                        tests={"targeted/a": str(sets["test_t"])}),
        rollout=RolloutConfig(k_pool=4, k_target=4, batch_size=16, max_new_tokens=8, dtype="fp32"),
        eval=EvalConfig(samples=0, max_new_tokens=8),
        gradient=GradientConfig(mode=mode, autocast_bf16=autocast_bf16),
        projection=ProjectionConfig(k=64, store_dtype="fp32"),
        select=SelectConfig(ratio=0.25), curriculum=CurriculumConfig(stages=2, tensorboard=False))


@pytest.fixture(scope="module")
def beta_rollouts(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """Parity data sets and beta's rollouts of them, sampled once for the module."""
    tmp = tmp_path_factory.mktemp("modes")
    sets = write_parity_sets(tmp / "data")
    run = Run(_config(tiny_model_dir, sets), root=tmp / "seed", rollouts_root=tmp / "rollouts")
    phase_rollouts(run)
    run.release_policies()
    return sets, tmp / "rollouts"


def _run(model: Path, sets: dict, rollouts: Path, root: Path, **kw) -> Run:
    shutil.copytree(rollouts, root / "rollouts")
    return Run(_config(model, sets, **kw), root=root)


def _theta1(tiny_model_dir: Path, out: Path) -> Path:
    """A 'stage 0 checkpoint': beta with noise on its weights, so that theta_1 != beta."""
    model = load_model(str(tiny_model_dir), "fp32", "cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(str(out), safe_serialization=True)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(str(out))
    return out


def test_onpolicy_scores_fresh_samples_of_the_stage_model(tiny_model_dir, beta_rollouts, tmp_path):
    from cropi.curriculum.score_phase import phase_score

    sets, rollouts = beta_rollouts
    on = _run(tiny_model_dir, sets, rollouts, tmp_path / "on", mode="onpolicy")
    off = _run(tiny_model_dir, sets, rollouts, tmp_path / "off", mode="offpolicy")
    beta_sets = phase_rollouts(on)  # already complete: loaded, nothing sampled
    theta1 = _theta1(tiny_model_dir, on.dir.checkpoint(0))
    shutil.copytree(theta1, off.dir.checkpoint(0))
    phase_score(on, 1, beta_sets)
    phase_score(off, 1, beta_sets)
    on.release_policies(), off.release_policies()

    assert not (off.dir.stage(1) / "onpolicy").exists()
    fresh = {name: load_rollouts(on.dir.stage(1) / "onpolicy" / name) for name in ("pool", "targets/a")}
    model = load_model(str(theta1), "fp32", "cpu")
    beta = load_model(str(tiny_model_dir), "fp32", "cpu")
    pad = int(load_tokenizer(str(theta1)).pad_token_id)
    for name, items in fresh.items():
        stored = beta_sets[name]
        assert [it.id for it in items] == [it.id for it in stored]
        assert [len(it.response_ids) for it in items] == [len(it.response_ids) for it in stored]
        assert any(a.response_ids != b.response_ids for a, b in zip(items, stored))  # new samples
        # sampled (and log-probed) by theta_1, the stage's model, not by beta; log-probs are
        # stored for the prompts with a gradient only (rollout.logprobs=gradient)
        assert all(len(lp) == 0 for it in items if it.zero_grad for lp in it.logprobs)
        items = [it for it in items if not it.zero_grad]
        assert items
        flat_p = [it.prompt_ids for it in items for _ in it.response_ids]
        flat_r = [r for it in items for r in it.response_ids]
        recorded = np.concatenate([lp for it in items for lp in it.logprobs])
        by_theta = np.concatenate(response_logprobs(model, flat_p, flat_r, pad))
        by_beta = np.concatenate(response_logprobs(beta, flat_p, flat_r, pad))
        np.testing.assert_allclose(recorded, by_theta, atol=1e-4)
        assert np.abs(recorded - by_beta).max() > 1e-2

    # the stage's features are those of the fresh rollouts, computed directly
    cfg = on.cfg
    setup = prepare_scoring(model, cfg.gradient, cfg.projection)
    for name, items in fresh.items():
        ids, feats, zero = FeatureStore.load(on.dir.features(1, name)).read()
        store = FeatureStore.open(tmp_path / "direct" / name, [it.id for it in items], setup.projector.k,
                                  "fp32", {"direct": name})
        compute_features(setup.model, setup.params, setup.projector, items, store, cfg.gradient, pad)
        d_ids, d_feats, d_zero = FeatureStore.load(tmp_path / "direct" / name).read()
        assert ids == d_ids and zero.tolist() == d_zero.tolist()
        assert zero.tolist() == [it.zero_grad for it in items]
        np.testing.assert_allclose(feats, d_feats, rtol=1e-5, atol=1e-7)
        # ... and not those of beta's rollouts at the same weights
        o_ids, o_feats, o_zero = FeatureStore.load(off.dir.features(1, name)).read()
        assert o_ids == ids
        both = ~zero & ~o_zero
        assert both.any()
        assert not np.allclose(feats[both], o_feats[both], rtol=1e-2, atol=1e-6)


def test_influence_once_reuses_stage0_selection_without_scoring(tiny_model_dir, beta_rollouts, tmp_path,
                                                                monkeypatch):
    import cropi.curriculum.loop as loop
    from cropi.curriculum.compare import run_compare

    sets, rollouts = beta_rollouts
    root = tmp_path / "cmp"
    shutil.copytree(rollouts, root / "rollouts")  # the comparison's shared beta rollouts
    cfg = _config(tiny_model_dir, sets, out_dir=str(tmp_path), name="cmp")
    scored, trained = [], []
    real_score = loop.phase_score

    def spy_score(run, stage, *a, **kw):
        scored.append(stage)
        return real_score(run, stage, *a, **kw)

    monkeypatch.setattr(loop, "phase_score", spy_score)
    monkeypatch.setattr(loop, "phase_train", lambda run, stage, ids: trained.append((stage, list(ids))))
    monkeypatch.setattr(loop, "phase_eval_initial", lambda run: None)
    run_compare(cfg, ["influence-once"], [0])

    run_root = root / "arms" / "influence-once" / "seed_0"
    first = read_selection(run_root / "stages/stage_000/selection.json")
    second = read_selection(run_root / "stages/stage_001/selection.json")
    assert first["policy"] == "influence" and len(first["ids"]) == 4
    assert second["ids"] == first["ids"] and second["budget"] == first["budget"]
    assert second["policy"] == "influence-once"
    assert scored == [0]  # stage 1 is never scored
    assert (run_root / "stages/stage_000/scores.parquet").exists()
    assert not (run_root / "stages/stage_001/scores.parquet").exists()
    assert not (run_root / "stages/stage_001/features").exists()
    assert trained == [(0, first["ids"]), (1, first["ids"])]


def test_drift_ess_matches_float64_and_resamples_low_prompts(tiny_model_dir, beta_rollouts, tmp_path):
    """Stage 1 measures ESS/K of each pool prompt's importance weights at theta_1 (1 at beta), and
    ``score.resample_below_ess`` replaces the prompts below it by fresh samples of theta_1."""
    import json
    import math

    from cropi.curriculum.score_phase import phase_score
    from cropi.influence.drift import pool_ess
    from cropi.influence.scores import read_scores

    sets, rollouts = beta_rollouts
    run = _run(tiny_model_dir, sets, rollouts, tmp_path / "d")
    run.cfg.score.resample_below_ess = 0.9
    beta_sets = phase_rollouts(run)
    theta1 = _theta1(tiny_model_dir, run.dir.checkpoint(0))
    pool = beta_sets["pool"]
    beta = load_model(str(tiny_model_dir), "fp32", "cpu")
    pad = int(load_tokenizer(str(theta1)).pad_token_id)
    at_beta = pool_ess(beta, pool, pad)
    assert np.allclose(at_beta[np.isfinite(at_beta)], 1.0, atol=1e-4)  # theta = beta: equal weights

    phase_score(run, 1, beta_sets)
    run.release_policies()
    got = dict(zip(*[read_scores(run.dir.scores(1)).column(c).to_pylist() for c in ("id", "ess")]))
    model = load_model(str(theta1), "fp32", "cpu")
    expected = {}
    for it in pool:
        if it.zero_grad:
            assert got[it.id] is None or math.isnan(got[it.id])
            continue
        lp = response_logprobs(model, [it.prompt_ids] * len(it.response_ids), it.response_ids, pad)
        w = [math.exp(sum(a) - float(np.sum(np.asarray(b, np.float64)))) for a, b in zip(lp, it.logprobs)]
        expected[it.id] = sum(w) ** 2 / (len(w) * sum(x * x for x in w))
        assert got[it.id] == pytest.approx(expected[it.id], rel=1e-4)
    low = sorted(i for i, e in expected.items() if e < 0.9)
    assert low, "the perturbation should move some prompts below the threshold"
    events = [json.loads(line) for line in (run.dir.root / "metrics.jsonl").read_text().splitlines()]
    drift = [e for e in events if e["event"] == "drift"]
    assert len(drift) == 1 and drift[0]["resampled"] == len(low)
    assert drift[0]["share_below"] == pytest.approx(len(low) / len(expected))
    fresh = load_rollouts(run.dir.stage(1) / "resampled" / "pool")
    assert sorted(it.id for it in fresh) == low
    spec = json.loads((run.dir.features(1, "pool") / "spec.json").read_text())["spec"]
    assert spec["resample_below_ess"] == 0.9


def test_drift_from_the_gradient_pass_equals_its_own_pass(tiny_model_dir, beta_rollouts, tmp_path):
    """Without resampling or a shortlist, a stage's drift measures come from the log-probs of the
    pool's POPI gradient pass (no forward pass of their own) and equal the separate pass's in fp32
    (under bf16 autocast they carry the gradient pass's bf16 rounding); a prompt the gradient pass
    did not measure (scored several per backward) still gets the separate pass."""
    import json

    from cropi.curriculum.score_phase import _drift, fuses_drift, phase_score
    from cropi.influence.drift import pool_ess

    sets, rollouts = beta_rollouts
    run = _run(tiny_model_dir, sets, rollouts, tmp_path / "f", autocast_bf16=False)
    beta_sets = phase_rollouts(run)
    theta1 = _theta1(tiny_model_dir, run.dir.checkpoint(0))
    assert fuses_drift(run, 1) and not fuses_drift(run, 0)
    phase_score(run, 1, beta_sets)
    pool = beta_sets["pool"]
    model = load_model(str(theta1), "fp32", "cpu")
    pad = int(load_tokenizer(str(theta1)).pad_token_id)
    ess_k, per = pool_ess(model, pool, pad, details=True)
    with np.load(run.dir.stage(1) / "drift.npz") as got:
        np.testing.assert_allclose(got["ess"], ess_k, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["nll"], per["nll"], rtol=1e-5)
        np.testing.assert_allclose(got["pass_rate_is"], per["pass_rate_is"], rtol=1e-5, atol=1e-6)
    events = [json.loads(line) for line in (run.dir.root / "metrics.jsonl").read_text().splitlines()]
    drift = [e for e in events if e["event"] == "drift"]
    with_grad = [it for it in pool if not it.zero_grad]
    assert len(with_grad) >= 2
    assert len(drift) == 1 and drift[0]["from_gradient_pass"] == len(with_grad)
    assert drift[0]["work"]["tokens_forward"] == 0 and drift[0]["mean_ess"] < 1 - 1e-3

    first = with_grad[0]
    ess_part, _ = _drift(run, 1, beta_sets, {first.id: (0.5, 1.0, 0.25)})  # the others run the pass
    n = pool.index(first)
    assert ess_part[n] == 0.5
    rest = [i for i in range(len(pool)) if i != n]
    np.testing.assert_allclose(ess_part[rest], ess_k[rest], rtol=1e-5, atol=1e-6)
    run.cfg.score.resample_below_ess = 0.5
    assert not fuses_drift(run, 1)
