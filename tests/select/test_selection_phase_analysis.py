"""The select phase's analysis on a run with hand-made rollouts (known entropies), hand-made
feature stores (a planted target-like subset) and the tiny model's hidden states."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cropi.api import make_config, open_run
from cropi.curriculum.select_phase import (beta_nll, drift_measures, gradient_similarity,
                                           phase_select, selection_measures)
from cropi.data.schema import validate_record
from cropi.influence.features import FeatureStore
from cropi.influence.scores import score_table, write_scores
from cropi.model.loading import load_tokenizer
from cropi.model.template import prompt_token_ids
from cropi.rollout.store import PromptRollouts, finalize, load_rollouts, prepare_dir, write_part

N_POOL, N_TARGET, K, DIM = 16, 4, 4, 8


def record(i: int, split: str, level: str) -> object:
    return validate_record({"id": f"{split}{i:02d}", "prompt": f"What is {i} + {i % 3}?",
                            "answer": str(i + i % 3), "source": "add" if i % 2 else "mul",
                            "level": level, "meta": {"verifier": "numeric"}})


def rows(records: list, tok, nll: list[float], rewards: list[list[float]]) -> list[dict]:
    out = []
    for rec, c, r in zip(records, nll, rewards, strict=True):
        resp = [[11, 12, 13], [14, 15], [16], [17, 18, 19, 20]]
        out.append({"id": rec.id, "source": rec.source, "level": rec.level,
                    "prompt_ids": prompt_token_ids(tok, rec.prompt), "response_ids": resp,
                    "response_text": ["x"] * K, "rewards": r,
                    "logprobs": [[-c] * len(x) for x in resp], "pass_rate": float(np.mean(r)),
                    "n_tokens": sum(len(x) for x in resp), "sampling": "all"})
    return out


def write_set(folder: Path, data: list[dict]) -> None:
    prepare_dir(folder, {"test": True})
    write_part(folder, 0, data)
    finalize(folder, 1, {})


def store(path: Path, ids: list[str], feats: np.ndarray) -> None:
    fs = FeatureStore.open(path, ids, DIM, "fp32", {"test": True})
    fs.write(ids, feats, [not np.any(f) for f in feats])
    fs.finalize()
    fs.close()


@pytest.fixture()
def run(tmp_path: Path, tiny_model_dir: Path):
    pool = [record(i, "p", f"L{1 + i % 3}") for i in range(N_POOL)]
    target = [record(i, "t", "L2") for i in range(N_TARGET)]
    cfg = make_config(name="r", out_dir=str(tmp_path), model={"path": str(tiny_model_dir)},
                      select={"ratio": 0.25}, curriculum={"tensorboard": False})
    run = open_run(cfg, pool=pool, targets={"t": target})
    tok = load_tokenizer(str(tiny_model_dir))
    nll = [0.5 + 0.1 * i for i in range(N_POOL)]  # known: beta's NLL per token of prompt i
    rewards = [[1, 0, 0, 0] if i < 12 else [0, 0, 0, 0] for i in range(N_POOL)]  # 12 with a gradient
    write_set(run.dir.rollouts("pool"), rows(pool, tok, nll, rewards))
    write_set(run.dir.rollouts("targets/t"), rows(target, tok, [1.0] * N_TARGET, [[1, 0, 1, 0]] * N_TARGET))
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(DIM)
    feats = rng.standard_normal((N_POOL, DIM))
    feats[[1, 3, 5]] = direction + 0.05 * rng.standard_normal((3, DIM))  # planted: gradient like the target's
    feats[12:] = 0.0  # no gradient
    store(run.dir.features(0, "pool"), [r.id for r in pool], feats)
    t_feats = direction + 0.05 * rng.standard_normal((N_TARGET, DIM))
    store(run.dir.features(0, "targets/t"), [r.id for r in target], t_feats)
    mean = t_feats.mean(axis=0)  # the paper scorer: cosine with the target's mean gradient
    cos = feats @ mean / (np.linalg.norm(feats, axis=1) * np.linalg.norm(mean) + 1e-300)
    score = np.where(np.any(feats != 0, axis=1), cos, np.nan)
    write_scores(run.dir.scores(0), score_table([r.id for r in pool], {"t": score}, [np.mean(r) for r in rewards],
                                                [r.source for r in pool], [r.level for r in pool],
                                                spec={"scorer": "paper", "scorer_options": {}}))
    return run


def test_beta_nll_of_known_logprobs(run) -> None:
    items = load_rollouts(run.dir.rollouts("pool"))
    assert [round(beta_nll(it), 6) for it in items] == [round(0.5 + 0.1 * i, 6) for i in range(N_POOL)]
    empty = PromptRollouts("e", "a", None, [1], [[]], [""], np.zeros(1, np.float32), [np.zeros(0, np.float32)])
    assert np.isnan(beta_nll(empty))


def test_select_writes_the_analysis(run) -> None:
    pool = load_rollouts(run.dir.rollouts("pool"))
    sel = phase_select(run, 0, pool)
    assert {"p01", "p03", "p05"} <= set(sel["ids"])  # the planted prompts lead the influence ranking
    analysis = sel["stats"]["analysis"]
    m = analysis["measures"]
    ent = m["entropy_beta"]["gradient"]
    picked = [int(i[1:]) for i in sel["ids"]]
    assert ent["selected"] == pytest.approx(np.mean([0.5 + 0.1 * i for i in picked]))
    assert ent["group"] == pytest.approx(np.mean([0.5 + 0.1 * i for i in range(12)]))
    grad = m["similarity_gradient/t"]["gradient"]
    assert grad["selected"] > 0.7 and grad["diff_lo"] > 0  # the planted prompts lead the selection
    assert "similarity_embedding/t" in m and np.isfinite(m["similarity_embedding/t"]["pool"]["selected"])
    assert m["level"]["pool"]["n_group"] == N_POOL
    assert analysis["notes"]["embedding"].startswith("policy:")
    assert "sampled tokens" in analysis["notes"]["entropy"]
    text = run.dir.selection(0).read_text()
    assert "NaN" not in text and json.loads(text)["stats"]["analysis"] == analysis


def test_gradient_similarity_is_the_paper_score(run) -> None:
    from cropi.influence.scores import read_scores, target_scores

    ids = [f"p{i:02d}" for i in range(N_POOL)]
    got = gradient_similarity(run, 0, ids)["t"]
    want = target_scores(read_scores(run.dir.scores(0)), ids)["t"]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_no_analysis_when_switched_off(run) -> None:
    import dataclasses

    cfg = run.cfg
    off = run.with_config(dataclasses.replace(cfg, select=dataclasses.replace(cfg.select, analysis=False)))
    sel = phase_select(off, 0, load_rollouts(run.dir.rollouts("pool")))
    assert "analysis" not in sel["stats"]


def test_mmr_in_embedding_and_gradient_space_records_its_options(run) -> None:
    import dataclasses

    pool = load_rollouts(run.dir.rollouts("pool"))
    for space in ("embedding", "gradient"):
        cfg = run.cfg
        shaped = run.with_config(dataclasses.replace(cfg, select=dataclasses.replace(
            cfg.select, options={"space": space, "mmr_lambda": 0.3})))
        shaped.overwrite = True
        sel = phase_select(shaped, 0, pool, policy="influence-mmr")
        assert sel["policy"] == "influence-mmr" and len(sel["ids"]) == 4
        assert sel["options"] == {"mmr_lambda": 0.3, "space": space, "candidates": 3.0}
        if space == "gradient":  # at most one of the three planted near-duplicates
            assert len({"p01", "p03", "p05"} & set(sel["ids"])) == 1


def test_current_policy_measures_from_the_drift_file(run) -> None:
    ids = [f"p{i:02d}" for i in range(N_POOL)]
    assert drift_measures(run, 0, ids) is None
    folder = run.dir.stage(1)
    folder.mkdir(parents=True)
    resampled = np.full(N_POOL - 1, np.nan)
    resampled[2] = 0.75
    with open(folder / "drift.npz", "wb") as fh:  # as the drift pass writes it (one prompt fewer)
        np.savez(fh, ids=np.array(ids[:-1]), ess=np.ones(N_POOL - 1), nll=np.arange(N_POOL - 1.0),
                 pass_rate_is=np.full(N_POOL - 1, 0.25), pass_rate_resampled=resampled)
    got = drift_measures(run, 1, ids)
    assert got is not None
    np.testing.assert_array_equal(got["nll_current"][:-1], np.arange(N_POOL - 1.0))
    assert np.isnan(got["nll_current"][-1])
    assert got["pass_rate_current"][2] == 0.75 and got["pass_rate_current"][0] == 0.25
    m = selection_measures(run, 1, load_rollouts(run.dir.rollouts("pool")))
    assert "nll_current" in m.values and "pass_rate_current" in m.values
    # no stage-1 checkpoint here: the embeddings are beta's at every stage, so they are still measured
    assert m.notes["embedding"].startswith("policy:") and "similarity_embedding/t" in m.values


def test_drift_pass_returns_the_policys_nll_and_pass_rate(run) -> None:
    from cropi.curriculum.phases import load_policy
    from cropi.influence.drift import pool_ess, prompt_ess
    from cropi.influence.scorers import ess, sequence_logw
    from cropi.model.logprobs import response_logprobs

    items = load_rollouts(run.dir.rollouts("pool"))[:3] + load_rollouts(run.dir.rollouts("pool"))[-1:]
    policy = load_policy(run.model_path(0), run.cfg)
    ess_k, per = pool_ess(policy.model, items, policy.pad_id, details=True)
    assert np.array_equal(ess_k, pool_ess(policy.model, items, policy.pad_id), equal_nan=True)
    for i, it in enumerate(items[:3]):
        lp = [np.asarray(x, np.float64) for x in
              response_logprobs(policy.model, [it.prompt_ids] * K, it.response_ids, policy.pad_id)]
        logw = sequence_logw(lp, it.logprobs)
        w = np.exp(logw - logw.max())
        assert per["pass_rate_is"][i] == pytest.approx(float(np.sum(w * it.rewards) / w.sum()))
        assert per["nll"][i] == pytest.approx(-sum(x.sum() for x in lp) / sum(x.size for x in lp))
        assert ess_k[i] == pytest.approx(float(ess(logw))) == pytest.approx(prompt_ess(policy.model, it, policy.pad_id))
    assert np.isnan(per["nll"][-1]) and per["pass_rate_is"][-1] == 0.0  # no gradient: skipped


def test_cropi_select_prints_the_analysis(run, capsys: pytest.CaptureFixture[str]) -> None:
    from cropi.cli.show import print_selection

    print_selection(phase_select(run, 0, load_rollouts(run.dir.rollouts("pool"))))
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "what the selection picks" in out and "entropy_beta" in out and "similarity_gradient/t" in out
    assert "permutation p-value" in out and "sampled tokens" in out


def test_embeddings_are_kept_for_the_next_selection_and_stage(run, monkeypatch: pytest.MonkeyPatch) -> None:
    import cropi.influence.embeddings as emb

    pool = load_rollouts(run.dir.rollouts("pool"))
    first = selection_measures(run, 0, pool).values["similarity_embedding/t"]
    kept = list((run.dir.rollouts_root / "embeddings").glob("*/pool.npy"))
    assert len(kept) == 1 and (kept[0].parent / "targets__t.npy").is_file()
    before = kept[0].read_bytes()

    def refuse(*a, **k):
        raise AssertionError("embedded again")

    monkeypatch.setattr(emb, "hidden_state_embeddings", refuse)
    again = selection_measures(run, 0, pool).values["similarity_embedding/t"]
    np.testing.assert_array_equal(first, again)
    later = selection_measures(run, 1, pool)  # a later stage: beta's space again, not re-embedded
    np.testing.assert_array_equal(first, later.values["similarity_embedding/t"])
    assert later.notes["embedding"] == selection_measures(run, 0, pool).notes["embedding"]
    assert kept[0].read_bytes() == before


def test_an_encoder_that_cannot_load_is_named(run, tmp_path: Path) -> None:
    import dataclasses

    from cropi.curriculum.select_phase import prompt_embeddings
    from cropi.utils.errors import CropiError

    cfg = run.cfg
    bad = run.with_config(dataclasses.replace(cfg, select=dataclasses.replace(
        cfg.select, embedding_model=str(tmp_path / "no-such-encoder"))))
    pool = load_rollouts(run.dir.rollouts("pool"))
    with pytest.raises(CropiError, match="no-such-encoder"):
        prompt_embeddings(bad, pool)
    notes = selection_measures(bad, 0, pool).notes  # the analysis says so and goes on
    assert notes["embedding"].startswith("not computed") and "select.embedding_model" in notes["embedding"]


def test_a_named_encoder_embeds_the_prompt_text(run, tiny_model_dir: Path) -> None:
    import dataclasses

    cfg = run.cfg
    enc = run.with_config(dataclasses.replace(cfg, select=dataclasses.replace(
        cfg.select, embedding_model=str(tiny_model_dir))))
    m = selection_measures(enc, 0, load_rollouts(run.dir.rollouts("pool")))
    assert m.notes["embedding"] == f"encoder:{tiny_model_dir}"
    sims = m.values["similarity_embedding/t"]
    assert sims.shape == (N_POOL,) and np.isfinite(sims).all()
