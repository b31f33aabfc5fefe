"""The cells of benchmarks/selection_quality.py, shared with benchmarks/stability_curve.py.

A cell is one suite at one rollout temperature, K responses per prompt and one rollout seed, in
``WORK/SUITE/T{temperature}-K{k}[-r{seed}]``: ``rollouts/{pool,targets/NAME}`` (cropi's
``collect``) and ``groups/{pool,targets/NAME}/ID.npz``, per prompt the four projected group sums
``[S_{A,1}, S_{A,0}, S_{B,1}, S_{B,0}]`` of its two halves of responses
(:mod:`cropi.influence.group_sums`). :func:`cell_data` reads a finished cell, :func:`make_draws`
turns it into the draws that are scored (half A, half B, all K), :func:`run_scorers` scores a
draw with every variant of :func:`scorer_grid`; the metrics are :mod:`cropi.report.selection_quality`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cropi.influence.group_sums import half_features


def suite_spec(name: str, cap: int | None) -> Any:
    """The built-in suite ``name``; with ``cap``, every pool family holds at most ``cap`` prompts
    (a cheaper cell on a big suite; target sets stay whole; questions are drawn afresh)."""
    from cropi.data.suite_specs import SUITES

    spec = SUITES[name]
    if cap is None:
        return spec
    return replace(spec, name=f"{name}-cap{cap}", pool=[(f, min(c, cap)) for f, c in spec.pool])


def suite_label(name: str, cap: int | None) -> str:
    return name if cap is None else f"{name}-cap{cap}"


def cell_name(temperature: float, k: int, rollout_seed: int = 0) -> str:
    """``T0.5-K16``; another rollout seed (an independent draw of everything) adds ``-r1``."""
    return f"T{temperature:g}-K{k}" + (f"-r{rollout_seed}" if rollout_seed else "")


def cell_dir(work: Path, suite: str, temperature: float, k: int, rollout_seed: int = 0) -> Path:
    return work / suite / cell_name(temperature, k, rollout_seed)


def family_of(spec: Any) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Target family per target, and related pool families (same reasoning-gym generator)."""
    fam = {t: items[0][0].name for t, items in spec.targets.items()}
    ds = {f.name: f.dataset for f, _ in spec.pool}
    for items in spec.targets.values():
        ds.update({f.name: f.dataset for f, _ in items})
    related = {t: sorted(p for p in ds if p != fam[t] and ds[p] == ds[fam[t]]
                         and p in {f.name for f, _ in spec.pool}) for t in fam}
    return fam, related


def collect_cell(cdir: Path, suite: str, *, cap: int | None, suite_seed: int, k: int,
                 temperature: float, max_new_tokens: int, rollout_seed: int,
                 policy_fn: Callable[[], Any]) -> tuple[dict[str, list[Any]], float]:
    """K responses per prompt of the pool and every target set into ``cdir/rollouts``
    (resumable; ``policy_fn`` is called only when something is left to sample): the sets'
    rollouts ``{"pool": [...], "targets/NAME": [...]}`` and the seconds taken."""
    from cropi.config import RolloutConfig
    from cropi.data.suites import build_suite_from_spec
    from cropi.rollout.collect import collect
    from cropi.rollout.store import load_rollouts

    built = build_suite_from_spec(suite_spec(suite, cap), suite_seed)
    cfg = RolloutConfig(k_pool=k, k_target=k, temperature=temperature,
                        max_new_tokens=max_new_tokens, seed=rollout_seed)
    sets = {"pool": built.pool, **{f"targets/{t}": recs for t, recs in built.targets.items()}}
    spec = {"bench": "selection_quality", "suite": suite_label(suite, cap), "suite_seed": suite_seed}
    t0 = time.perf_counter()
    out = {}
    for name, recs in sets.items():
        collect(recs, cdir / "rollouts" / name, policy_fn, k, cfg, spec, name=name)
        out[name] = load_rollouts(cdir / "rollouts" / name)
    return out, time.perf_counter() - t0


def load_groups(items: Sequence[Any], folder: Path) -> tuple[np.ndarray, dict[str, float]]:
    """Group sums ``[n, 4, k]`` (float64) of ``items`` from ``folder/ID.npz``, and their summed
    gradient and projection seconds and group count."""
    gs, t = [], {"grad_s": 0.0, "project_s": 0.0, "n_groups": 0}
    for it in items:
        with np.load(folder / f"{it.id}.npz") as z:
            gs.append(z["groups"])
            for key in t:
                t[key] += float(z[key])
    return np.stack(gs).astype(np.float64), t


def cell_data(sets: dict[str, list[Any]], feat_dir: Path, half: int
              ) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """A finished cell's rollouts and group sums: targets, pool sources and rewards, group sums
    (``pool_groups``, ``target_groups``, rewards ``target_rewards``), the reconstructed features
    (:func:`~cropi.influence.group_sums.half_features`) and the stored feature cost per set."""
    data: dict[str, Any] = {"targets": [n.split("/", 1)[1] for n in sets if n != "pool"]}
    pool = sets["pool"]
    data["pool_source"] = np.array([it.source for it in pool])
    data["pool_rewards"] = np.stack([np.asarray(it.rewards, np.float64) for it in pool])
    data["pool_groups"], tp = load_groups(pool, feat_dir / "pool")
    data["pool_feats"] = half_features(data["pool_groups"], data["pool_rewards"], half)
    data["target_feats"], data["target_groups"], data["target_rewards"] = {}, {}, {}
    cost = {"pool": tp}
    for t in data["targets"]:
        items = sets[f"targets/{t}"]
        gt, cost[t] = load_groups(items, feat_dir / "targets" / t)
        rw = np.stack([np.asarray(it.rewards, np.float64) for it in items])
        data["target_feats"][t] = half_features(gt, rw, half)
        data["target_groups"][t], data["target_rewards"][t] = gt, rw
    return data, cost


@dataclass
class Draw:
    """One draw of everything: pool features, zero mask, pass rates, counts; target features."""

    name: str
    pool: np.ndarray
    zero: np.ndarray
    pass_rate: np.ndarray
    n_correct: np.ndarray
    k: int
    targets: dict[str, np.ndarray]
    target_zero: dict[str, np.ndarray]
    source: np.ndarray


def make_draws(data: dict[str, Any], half: int) -> dict[str, Draw]:
    """The draws ``{"A", "B", "full"}`` of a cell's :func:`cell_data`."""
    draws = {}
    for key, sl in (("A", slice(0, half)), ("B", slice(half, None)), ("full", slice(None))):
        pr = data["pool_rewards"][:, sl]
        feats = data["pool_feats"][key]
        tfe = {t: data["target_feats"][t][key] for t in data["targets"]}
        tze = {t: ~np.any(tfe[t] != 0, axis=1) for t in data["targets"]}
        draws[key] = Draw(key, feats, ~np.any(feats != 0, axis=1), pr.mean(1), pr.sum(1), pr.shape[1],
                          tfe, tze, data["pool_source"])
    return draws


def scorer_grid() -> list[tuple[str, str, dict[str, Any]]]:
    """(label, scorer name, options) of every variant evaluated. ``+source`` variants use the
    family label that enrichment is measured with: only their stability is meaningful."""
    return [
        ("paper", "paper", {}),
        ("differential", "differential", {}),
        ("differential-max", "differential", {"reduce": "max"}),
        ("centred", "centred", {}),
        ("centred-unit", "centred", {"unit": True}),
        ("unitmean", "unitmean", {}),
        ("paper+knn5", "knn", {"base": "paper", "neighbours": 5}),
        ("centred+knn5", "knn", {"base": "centred", "neighbours": 5}),
        ("centred+knn10", "knn", {"base": "centred", "neighbours": 10}),
        ("differential+knn5", "knn", {"base": "differential", "neighbours": 5}),
        ("paper+eb", "eb", {"base": "paper"}),
        ("centred+eb", "eb", {"base": "centred"}),
        ("differential+eb", "eb", {"base": "differential"}),
        ("centred+knn5+eb", "eb", {"base": "knn", "base_opts": {"base": "centred", "neighbours": 5}}),
        ("paper+source", "source", {"base": "paper"}),
        ("centred+source", "source", {"base": "centred"}),
    ]


def run_scorers(d: Draw, target_max: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """{label: {target: [n]}} for every variant of :func:`scorer_grid` on one draw."""
    from cropi.influence import scorers
    from cropi.influence.scores import target_mean

    means, tfeats = {}, {}
    for t, tf in d.targets.items():
        ids = [str(i) for i in range(tf.shape[0])]
        means[t], used = target_mean(tf, d.target_zero[t], ids, max_n=target_max, seed=seed, name=t)
        tfeats[t] = tf[[int(u) for u in used]]
    out = {}
    for label, name, opts in scorer_grid():
        out[label] = scorers.score(name, d.pool, d.zero, means, target_feats=tfeats,
                                   n_correct=d.n_correct, n_responses=d.k, sources=d.source, **opts)
    return out
