"""The select phase of a stage: a registered selection policy over the pool -> selection.json.

It also measures what the selection picks (``select.analysis``, :mod:`cropi.select.analysis`):
beta's token NLL of its own responses, the stage's policy's NLL and pass rate on them (stages > 0,
from the drift measures' ``drift.npz``), the ordinal level, and the similarity of each prompt to each
target set in embedding space (hidden states of beta, the initial model, at every stage, or
``select.embedding_model``; computed once and kept in ``rollouts/embeddings/``) and in gradient space
(the stage's feature stores).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from cropi.curriculum.phases import Run
from cropi.curriculum.score_phase import current_scorer
from cropi.influence.features import FeatureStore
from cropi.influence.scores import read_scores, target_mean, target_scores
from cropi.model.fingerprint import model_fingerprint
from cropi.rollout.store import PromptRollouts, load_rollouts
from cropi.select import (SelectionContext, budget, get_policy, policy_fact, read_selection,
                          selection_stats, write_selection)
from cropi.select.analysis import PromptMeasures, centred_cosine, similarity_to_targets
from cropi.select.shaping import window_at
from cropi.utils.errors import CropiError
from cropi.utils.hashing import fingerprint
from cropi.utils.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)


def selection_context(run: Run, stage: int, pool: list[PromptRollouts], with_scores: bool,
                      policy: str | None = None,
                      cache: dict[str, dict[str, np.ndarray]] | None = None) -> SelectionContext:
    """What the selection policies see; ``with_scores``: the stage's per-target scores, fused with
    ``score.fusion`` for the budget of the selection being made. ``policy``: the policy the context
    is for; a policy that reads ``select.options`` gets the vectors its diversity rule needs
    (embeddings or projected gradients), and every context gets the stage's policy's pass rate
    where the drift measures estimated it. ``cache``: see :func:`prompt_embeddings`."""
    ids = [it.id for it in pool]
    scores = target_scores(read_scores(run.dir.scores(stage)), ids) if with_scores else None
    options = dict(run.cfg.select.options)
    embeddings = features = None
    if policy is not None and policy_fact(policy, "uses_options"):
        space = get_policy(policy).space(options)  # type: ignore[attr-defined]
        if space == "embedding":
            embeddings = prompt_embeddings(run, pool, cache)["pool"]
        elif space == "gradient":
            features = pool_features(run, stage, ids)
    drift = drift_measures(run, stage, ids)
    return SelectionContext(ids=ids, pass_rate=[it.pass_rate for it in pool], fused=None,
                            source=[it.source for it in pool], level=[it.level for it in pool],
                            seed=run.cfg.select.seed + stage, scores=scores, fusion=run.cfg.score.fusion,
                            target_sources=target_sources(run), stage=stage, options=options,
                            embeddings=embeddings, features=features,
                            current_pass_rate=None if drift is None else drift["pass_rate_current"])


# ---------------------------------------------------------------------------- per-prompt measures
def beta_nll(item: PromptRollouts) -> float:
    """Beta's mean negative log-probability per token of its own stored responses (all K pooled;
    the stored teacher-forced fp32 log-probs of the sampled tokens; NaN without tokens)."""
    n = sum(len(lp) for lp in item.logprobs)
    return float(-sum(float(np.sum(lp, dtype=np.float64)) for lp in item.logprobs) / n) if n else float("nan")


def drift_measures(run: Run, stage: int, ids: list[str]) -> dict[str, np.ndarray] | None:
    """The stage's policy's NLL and pass rate on beta's stored responses, aligned to ``ids``, from
    the drift measures (``stage_NNN/drift.npz``, stages > 0 with ``score.drift``); the pass rate is
    the one measured on re-sampled responses where the stage re-sampled the prompt, else the
    self-normalised importance-weighted estimate. None when the stage has no drift file."""
    path = run.dir.stage(stage) / "drift.npz"
    if stage == 0 or not path.is_file():
        return None
    with np.load(path) as data:
        index = {str(i): n for n, i in enumerate(data["ids"].tolist())}
        pos = np.array([index.get(i, -1) for i in ids])

        def col(name: str) -> np.ndarray:
            values = np.asarray(data[name], dtype=np.float64)
            return np.where(pos >= 0, values[np.maximum(pos, 0)], np.nan)

        resampled = col("pass_rate_resampled")
        return {"nll_current": col("nll"),
                "pass_rate_current": np.where(np.isfinite(resampled), resampled, col("pass_rate_is"))}


def embedding_spec(run: Run) -> str:
    """What makes the embeddings: the encoder's name, or beta's fingerprint (the initial model: one
    fixed space for every stage, so the picks' similarity can be compared across stages, and the
    prompts are embedded once per run, not once per stage)."""
    name = run.cfg.select.embedding_model
    if name is not None:
        return f"encoder:{name}"
    return f"policy:{model_fingerprint(run.model_path(0))}:{run.cfg.model.system_prompt}"


def prompt_embeddings(run: Run, pool: list[PromptRollouts],
                      cache: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    """``{"pool": [n, h], "targets/NAME": [m, h]}``: mean-pooled prompt embeddings of the pool and
    of every target set (:mod:`cropi.influence.embeddings`). Kept on disk under the shared rollouts
    (``rollouts/embeddings/<key>/``, ``.npy`` files written atomically, keyed by
    :func:`embedding_spec` and the prompt ids: every stage and every arm of a comparison reads the
    same files) and in ``cache``, a dict for the other callers of one selection. Beta's hidden
    states come from its rollouts where they keep them (fp32 sampling by cropi's decode loop, which
    computes them in its prefill), else from a forward pass over the prompts."""
    from cropi.influence.embeddings import encoder_embeddings, hidden_state_embeddings, prompt_text

    spec = embedding_spec(run)
    if cache is not None and spec in cache:
        return cache[spec]
    targets = {f"targets/{n}": load_rollouts(run.dir.rollouts(f"targets/{n}")) for n in run.data.targets}
    sets = {"pool": pool, **targets}
    key = {name: [it.id for it in items] for name, items in sets.items()}
    folder = run.dir.rollouts_root / "embeddings" / fingerprint({"spec": spec, "ids": key})
    files = {name: folder / f"{name.replace('/', '__')}.npy" for name in sets}
    if all(f.is_file() for f in files.values()):
        out = {name: np.load(f) for name, f in files.items()}
    else:
        t0 = time.perf_counter()
        name = run.cfg.select.embedding_model
        if name is None and all(it.embedding is not None for items in sets.values() for it in items):
            # beta's own, kept by its rollouts where the sampling computed them (the same means)
            out = {n: np.stack([it.embedding for it in items]) for n, items in sets.items()}
        elif name is None:
            policy = run.policy(run.model_path(0))
            out = {n: hidden_state_embeddings(policy.model, [it.prompt_ids for it in items], policy.pad_id,
                                              run.cfg.gradient.max_batch_tokens) for n, items in sets.items()}
        else:
            records = {r.id: r for recs in (run.data.pool, *run.data.targets.values()) for r in recs}
            try:
                out = {n: encoder_embeddings(name, [prompt_text(records[it.id].prompt) for it in items],
                                             run.device) for n, items in sets.items()}
            except OSError as exc:  # not found, or not downloadable offline
                raise CropiError(f"cannot load the encoder {name!r} ({exc})", field="select.embedding_model",
                                 fix="name a local folder (or a hub id with network access), or None for "
                                     "beta's own hidden states") from None
        atomic_write_json(folder / "spec.json", {"spec": spec, "ids": key})
        for n, f in files.items():
            with atomic_path(f) as tmp, open(tmp, "wb") as fh:
                np.save(fh, out[n])
        log.info("embedded %d prompts (%s) in %.1f s", sum(len(v) for v in out.values()), spec,
                 time.perf_counter() - t0)
    if cache is not None:
        cache[spec] = out
    return out


def pool_features(run: Run, stage: int, ids: list[str]) -> np.ndarray:
    """``[n, k]`` float32 projected gradients of the pool prompts ``ids`` at ``stage`` (rows of zeros
    for prompts without a gradient or not scored this stage)."""
    store = FeatureStore.load(run.dir.features(stage, "pool"))
    index = {i: n for n, i in enumerate(store.ids)}
    out = np.zeros((len(ids), store.k), dtype=np.float32)
    feats = store.features
    rows = [(n, index[i]) for n, i in enumerate(ids) if i in index]
    for start in range(0, len(rows), 4096):
        chunk = rows[start:start + 4096]
        out[[a for a, _ in chunk]] = np.asarray(feats[[b for _, b in chunk]], dtype=np.float32)
    return out


def gradient_similarity(run: Run, stage: int, ids: list[str]) -> dict[str, np.ndarray]:
    """``{target: [n]}``: cosine of each pool prompt's projected gradient with the target set's mean
    projected gradient (the same mean as scoring: ``score.target_max``, ``score.seed``); NaN for
    prompts without a gradient."""
    store = FeatureStore.load(run.dir.features(stage, "pool"))
    index = {i: n for n, i in enumerate(store.ids)}
    out = {}
    for name in run.data.targets:
        t_ids, t_feats, t_zero = FeatureStore.load(run.dir.features(stage, f"targets/{name}")).read()
        try:
            mean, _ = target_mean(t_feats, t_zero, t_ids, run.cfg.score.target_max, run.cfg.score.seed, name=name)
        except CropiError:  # no target prompt with a gradient: no direction to compare with
            continue
        values = np.full(len(ids), np.nan)
        rows = [(n, index[i]) for n, i in enumerate(ids) if i in index]
        for start in range(0, len(rows), 4096):
            chunk = rows[start:start + 4096]
            values[[a for a, _ in chunk]] = centred_cosine(np.asarray(store.features[[b for _, b in chunk]],
                                                                      dtype=np.float64), mean, None)
        out[name] = values
    return out


def selection_measures(run: Run, stage: int, pool: list[PromptRollouts],
                       cache: dict[str, dict[str, np.ndarray]] | None = None) -> PromptMeasures:
    """The per-prompt measures the selection is compared on (:func:`cropi.select.analysis.
    selection_analysis`); what could not be measured is said in ``notes``."""
    ids = [it.id for it in pool]
    m = PromptMeasures()
    m.add("entropy_beta", [beta_nll(it) for it in pool])
    m.notes["entropy"] = ("the sampled tokens' negative log-probability under beta (its stored "
                          "teacher-forced log-probs); the full-distribution entropy is not stored")
    drift = drift_measures(run, stage, ids)
    if drift is not None:
        m.add("nll_current", drift["nll_current"])
        m.add("pass_rate_current", drift["pass_rate_current"])
        m.notes["current"] = ("stage's policy on beta's responses (drift measures): NLL per token; pass rate "
                              "by self-normalised importance weights, or measured where re-sampled")
    elif stage > 0:
        m.notes["current"] = ("not measured: the stage has no drift.npz (score.drift off, or scored by "
                              "an earlier cropi); the GRPO groups' rewards are logged only as means")
    try:
        emb = prompt_embeddings(run, pool, cache)
        sims = similarity_to_targets(emb["pool"], {n.removeprefix("targets/"): v for n, v in emb.items()
                                                   if n != "pool"})
        for name, values in sims.items():
            m.add(f"similarity_embedding/{name}", values)
        m.notes["embedding"] = embedding_spec(run)
    except CropiError as exc:  # e.g. a named encoder that cannot load
        m.notes["embedding"] = f"not computed: {exc}"
    if (run.dir.features(stage, "pool") / "manifest.json").exists():
        for name, values in gradient_similarity(run, stage, ids).items():
            m.add(f"similarity_gradient/{name}", values)
        m.notes["gradient"] = f"projected POPI features of stage {stage}"
    else:
        m.notes["gradient"] = "not computed: the stage has no pool features (not scored)"
    return m


def target_sources(run: Run) -> list[str]:
    """The families (``source``) of the run's target-set prompts, sorted (the oracle's relevant set)."""
    return sorted({str(r.source) for recs in run.data.targets.values() for r in recs})


def selection_spec(run: Run, policy: str, n_pool: int, stage: int = 0) -> dict[str, Any]:
    """What makes a selection: policy, budget, ratio, seed (and fusion for influence; the resolved
    ``select.options`` for the policies that read them, and the window of the stage)."""
    cfg = run.cfg.select
    spec: dict[str, Any] = {"policy": policy, "budget": budget(n_pool, cfg.ratio), "ratio": cfg.ratio}
    if policy_fact(policy, "seeded"):
        spec["seed"] = cfg.seed
    if policy_fact(policy, "needs_target_sources"):
        spec["target_sources"] = target_sources(run)
    if policy_fact(policy, "needs_scores"):
        spec["fusion"] = run.cfg.score.fusion
        spec.update(current_scorer(run))
    if policy_fact(policy, "uses_options"):
        pol = get_policy(policy)
        spec["options"] = pol.options(dict(cfg.options))  # type: ignore[attr-defined]
        if getattr(pol, "difficulty", None) == "window":
            spec["window_at_stage"] = window_at(spec["options"], stage)
    return spec


def _check_stored_selection(run: Run, stage: int, stored: dict[str, Any], spec: dict[str, Any]) -> None:
    """Refuse to reuse a stored selection that was made differently from ``spec``."""
    diff = [f"{k}: {stored[k]!r} -> {v!r}" for k, v in spec.items() if k in stored and stored[k] != v]
    if diff:
        raise CropiError(f"stage {stage} already has a selection made differently ({'; '.join(diff)})",
                     file=run.dir.selection(stage),
                     fix="rerun with --overwrite to replace it, or use another --name")


def phase_select(run: Run, stage: int, pool: list[PromptRollouts], policy: str | None = None) -> dict[str, Any]:
    """Select the stage's subset with ``policy`` (default: the config's) and write selection.json.

    A stored selection is reused when it was made with the same policy, budget and fusion; a
    different request is refused (``--overwrite`` recomputes).
    """
    run.check_stage(stage)
    path = run.dir.selection(stage)
    name = policy or run.cfg.select.policy
    spec = selection_spec(run, name, len(pool), stage)
    if run.dir.done(stage, "selected") and path.exists() and not run.overwrite:
        stored = read_selection(path)
        _check_stored_selection(run, stage, stored, spec)
        return stored
    scored = run.dir.scores(stage).exists()
    if policy_fact(name, "needs_scores") and not scored:
        raise CropiError(f"does not exist: the {name} policy selects by the stage's scores",
                         file=run.dir.scores(stage),
                         fix=f"run `cropi score --stage {stage}` first, or choose another --policy")
    t0 = time.perf_counter()
    cache: dict[str, dict[str, np.ndarray]] = {}
    ctx = selection_context(run, stage, pool, with_scores=scored, policy=name, cache=cache)
    n = spec["budget"]
    ids = get_policy(name).select(ctx, n)
    prev = read_selection(run.dir.selection(stage - 1))["ids"] if stage > 0 and run.dir.selection(stage - 1).exists() else None
    measures = selection_measures(run, stage, pool, cache) if run.cfg.select.analysis else None
    stats = selection_stats(ctx, ids, prev, measures=measures)
    write_selection(path, name, n, ids, stats, **{k: v for k, v in spec.items() if k not in ("policy", "budget")})
    run.dir.mark(stage, "selected", policy=name, n=len(ids), seconds=time.perf_counter() - t0)
    return read_selection(path)
