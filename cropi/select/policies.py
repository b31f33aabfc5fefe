"""Selection policies: which pool prompts a stage trains on.

Policies receive arrays (:class:`SelectionContext`); they never read stores and never import
``cropi.influence`` or torch. Every policy returns prompt ids, in selection order (best first for
ranked policies, sampled order for random ones), and is deterministic given ``ctx.seed``.

Ties in ranked policies: ``influence`` orders by :func:`cropi.select.fusion.rank_order` (fused
score for the selection's budget, then the full-ranking reciprocal-rank sum, then pool position); ``learnability`` breaks ties of p(1-p) by a seeded random order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cropi.select import shaping
from cropi.select.fusion import fuse, order_desc, rank_order
from cropi.utils.errors import CropiError
from cropi.utils.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class SelectionContext:
    """What a policy may look at, one entry per pool prompt (``n`` of them).

    ids: prompt ids ``[n]``; pass_rate: beta's pass rate per prompt ``[n]`` float (NaN: unknown);
    fused: a ready fused influence score ``[n]`` (NaN: zero gradient), or None;
    source: task family ``[n]``; level: difficulty level ``[n]`` (None: no level); seed: for the
    random policies; scores: per-target influence scores ``{target: [n]}`` (NaN: zero gradient),
    fused with ``fusion`` for the budget of each selection (see :mod:`cropi.select.fusion`); when
    both are given, ``scores`` wins. Neither: the pool was not scored. target_sources: the task
    families (``source``) of the target sets' prompts, or None when unknown (the ``oracle`` policy
    needs them). stage: the stage being selected. options: ``select.options`` (read by the
    difficulty- and diversity-aware policies, :mod:`cropi.select.shaping`). embeddings ``[n, h]``:
    the prompts' embeddings; features ``[n, k]``: their projected gradients (rows of zeros for
    prompts without one); current_pass_rate ``[n]``: the stage's policy's pass rate where the stage
    estimated it (NaN elsewhere); each None when not provided.
    """

    ids: list[str]
    pass_rate: np.ndarray
    fused: np.ndarray | None
    source: list[str]
    level: list[str | None]
    seed: int = 0
    scores: dict[str, np.ndarray] | None = None
    fusion: str = "rrf"
    target_sources: list[str] | None = None
    stage: int = 0
    options: dict[str, Any] | None = None
    embeddings: np.ndarray | None = None
    features: np.ndarray | None = None
    current_pass_rate: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        self.pass_rate = np.asarray(self.pass_rate, dtype=np.float64)
        if self.fused is not None:
            self.fused = np.asarray(self.fused, dtype=np.float64)
        n = len(self.ids)
        lengths = {"pass_rate": len(self.pass_rate), "source": len(self.source),
                   "level": len(self.level)}
        if self.fused is not None:
            lengths["fused"] = len(self.fused)
        if self.scores is not None:
            self.scores = {t: np.asarray(v, dtype=np.float64) for t, v in self.scores.items()}
            lengths.update({f"scores[{t}]": len(v) for t, v in self.scores.items()})
        if self.current_pass_rate is not None:
            self.current_pass_rate = np.asarray(self.current_pass_rate, dtype=np.float64)
            lengths["current_pass_rate"] = len(self.current_pass_rate)
        for name in ("embeddings", "features"):
            value = getattr(self, name)
            if value is not None:
                if np.ndim(value) != 2:
                    raise ValueError(f"SelectionContext: {name} must be [n, d], got {np.shape(value)}")
                lengths[name] = len(value)
        bad = {key: value for key, value in lengths.items() if value != n}
        if bad:
            raise ValueError(f"SelectionContext: {n} ids but lengths {bad}")
        if len(set(self.ids)) != n:
            raise CropiError("the pool has duplicate prompt ids", fix="prompt ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def scored(self) -> bool:
        return bool(self.scores) or self.fused is not None

    def fused_scores(self, n_select: int) -> np.ndarray | None:
        """The fused score ``[n]`` for a selection of ``n_select`` prompts (None: not scored)."""
        if self.scores:
            return fuse(self.scores, n_select, self.fusion)
        return self.fused

    def influence_order(self, n_select: int) -> np.ndarray:
        """Positions of every scored prompt, best first, for a selection of ``n_select``."""
        if self.scores:
            return rank_order(self.scores, n_select, self.fusion)
        if self.fused is None:
            raise CropiError("the influence policy needs influence scores",
                             fix="run the scoring step first, or choose another select.policy")
        return order_desc(self.fused)


@runtime_checkable
class SelectionPolicy(Protocol):
    """A named rule that picks ``n`` prompt ids (ordered) from a :class:`SelectionContext`."""

    name: str

    def select(self, ctx: SelectionContext, n: int) -> list[str]: ...


def budget(n_pool: int, ratio: float) -> int:
    """Prompts per stage: ``max(1, round(ratio * n_pool))`` (Python's round: halves go to even)."""
    if n_pool < 1:
        raise CropiError("the pool is empty", fix="check the pool file or suite")
    if not 0 < ratio <= 1:
        raise CropiError(f"ratio must be in (0, 1], got {ratio}", field="select.ratio")
    return max(1, round(ratio * n_pool))


def _check_n(n: int) -> int:
    if n < 0:
        raise CropiError(f"cannot select {n} prompts", field="select.ratio", fix="use a ratio > 0")
    return int(n)


def _take(ctx: SelectionContext, order: np.ndarray, n: int, policy: str, what: str) -> list[str]:
    """The first ``n`` positions of ``order`` as ids; warn when fewer than ``n`` are eligible."""
    if order.size < n:
        log.warning("%s policy: only %d %s prompts for a budget of %d; selecting %d",
                    policy, order.size, what, n, order.size)
    return [ctx.ids[i] for i in order[:n]]


class InfluencePolicy:
    """Top ``n`` by fused influence score; NaN (zero-gradient) prompts are never selected."""

    name = "influence"
    needs_scores = True
    rollout_sets = ("pool", "targets")

    def select(self, ctx: SelectionContext, n: int) -> list[str]:
        n = _check_n(n)
        order = ctx.influence_order(max(n, 1))
        return _take(ctx, order, n, self.name, "scored (non-zero-gradient)")


class RandomPolicy:
    """``n`` prompts drawn uniformly without replacement (seeded)."""

    name = "random"
    seeded = True

    def select(self, ctx: SelectionContext, n: int) -> list[str]:
        n = _check_n(n)
        order = np.random.default_rng(ctx.seed).permutation(len(ctx))
        return _take(ctx, order, n, self.name, "pool")


class PassRatePolicy:
    """``n`` prompts drawn uniformly (seeded) among those with beta pass rate 0 < p < 1."""

    name = "pass-rate"
    seeded = True
    rollout_sets = ("pool",)

    def select(self, ctx: SelectionContext, n: int) -> list[str]:
        n = _check_n(n)
        p = ctx.pass_rate
        eligible = np.flatnonzero((p > 0) & (p < 1))
        order = eligible[np.random.default_rng(ctx.seed).permutation(eligible.size)]
        return _take(ctx, order, n, self.name, "partially solved (0 < p < 1)")


class LearnabilityPolicy:
    """Top ``n`` by p(1-p) of beta's pass rate p; ties by a seeded random order; NaN p excluded."""

    name = "learnability"
    seeded = True
    rollout_sets = ("pool",)

    def select(self, ctx: SelectionContext, n: int) -> list[str]:
        n = _check_n(n)
        p = ctx.pass_rate
        known = np.flatnonzero(np.isfinite(p))
        score = p[known] * (1 - p[known])
        tiebreak = np.random.default_rng(ctx.seed).permutation(known.size)
        order = known[np.lexsort((tiebreak, -score))]
        return _take(ctx, order, n, self.name, "with a known pass rate")


class OraclePolicy:
    """The budget filled from the pool prompts of the target sets' own families (an upper bound on
    what knowing the targets' task is worth; docs/acceleration.md#the-oracle-arm).

    A prompt is *relevant* when its ``source`` is one of ``ctx.target_sources``. The order is three
    tiers, each in a seeded random order: relevant prompts with a gradient under beta
    (0 < p < 1), the other relevant prompts, then the rest of the pool (only when the relevant
    prompts do not fill the budget).
    """

    name = "oracle"
    seeded = True
    rollout_sets = ("pool",)
    needs_target_sources = True

    def select(self, ctx: SelectionContext, n: int) -> list[str]:
        n = _check_n(n)
        if ctx.target_sources is None:
            raise CropiError("the oracle policy needs the target sets' families "
                             "(SelectionContext.target_sources)",
                             fix="run it through `cropi compare --arms oracle`, which passes them")
        relevant = np.isin(np.asarray(ctx.source, dtype=object),
                           np.asarray(list(ctx.target_sources), dtype=object))
        p = ctx.pass_rate
        gradient = (p > 0) & (p < 1)
        tier = np.where(relevant & gradient, 0, np.where(relevant, 1, 2))
        shuffle = np.random.default_rng(ctx.seed).permutation(len(ctx))
        order = shuffle[np.argsort(tier[shuffle], kind="stable")]
        if int((tier < 2).sum()) < n:
            log.info("oracle policy: %d relevant prompts (families %s) for a budget of %d; the rest "
                     "is random", int((tier < 2).sum()), ", ".join(ctx.target_sources), n)
        return _take(ctx, order, n, self.name, "pool")


class ShapedInfluencePolicy:
    """The influence ranking with a difficulty rule (``quota`` per level, or a pass-rate
    ``window`` that moves with the stage) and/or a diversity rule (``mmr``, or a ``cap`` per
    cluster in embedding or gradient space) deciding which ranked prompts fill the budget
    (:mod:`cropi.select.shaping`; options from ``ctx.options`` = ``select.options``). Picks are in
    rank order (MMR: in pick order); NaN (zero-gradient) prompts are never selected."""

    needs_scores = True
    rollout_sets = ("pool", "targets")
    seeded = True
    uses_options = True

    def __init__(self, name: str, difficulty: str | None = None, diversity: str | None = None) -> None:
        if difficulty not in shaping.DIFFICULTY_KEYS or diversity not in shaping.DIVERSITY_KEYS:
            raise ValueError(f"difficulty {difficulty!r} / diversity {diversity!r}")
        self.name, self.difficulty, self.diversity = name, difficulty, diversity

    def options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """The options this policy reads, defaults filled in (recorded in selection.json)."""
        return shaping.resolve_options(options, self.difficulty, self.diversity)

    def space(self, options: dict[str, Any] | None) -> str | None:
        """The vectors its diversity rule reads (embedding or gradient), or None."""
        return self.options(options)["space"] if self.diversity else None

    def _vectors(self, ctx: SelectionContext, space: str) -> np.ndarray:
        vectors = ctx.embeddings if space == "embedding" else ctx.features
        if vectors is None:
            raise CropiError(f"the {self.name} policy needs the prompts' {space} vectors "
                             f"(SelectionContext.{'embeddings' if space == 'embedding' else 'features'})",
                             field="select.options.space",
                             fix="select through `cropi select`/`cropi run`, which provide them")
        return np.asarray(vectors)

    def select(self, ctx: SelectionContext, n: int) -> list[str]:
        n = _check_n(n)
        opts = self.options(ctx.options)
        order = ctx.influence_order(max(n, 1))
        n_first = order.size  # the candidates the rules prefer come first in ``order``
        if self.difficulty == "window":
            rate = ctx.pass_rate
            if opts["rate"] == "current" and ctx.current_pass_rate is not None:
                rate = np.where(np.isfinite(ctx.current_pass_rate), ctx.current_pass_rate, rate)
            window = shaping.window_at(opts, ctx.stage)
            order, n_first = shaping.window_order(order, rate, window)
            if n_first < n:
                log.warning("%s: %d scored prompts with a pass rate in [%.3f, %.3f] for a budget of "
                            "%d; the best-ranked others fill the rest", self.name, n_first, *window, n)
        if self.diversity is not None:
            size = min(order.size, max(n, min(n_first, math.ceil(float(opts["candidates"]) * n))))
            if self.difficulty == "quota":  # the candidates keep the quota's proportions
                if self.diversity == "mmr":
                    raise CropiError("a level quota with MMR is not supported", field="select.policy")
                cand = shaping.level_quota(order, ctx.level, size, opts["quota"])
            else:
                cand = order[:size]
            vectors = self._vectors(ctx, opts["space"])
            if self.diversity == "mmr":
                picks = shaping.mmr(cand, vectors, n, float(opts["mmr_lambda"]))
            else:
                picks, _ = shaping.cluster_cap(cand, vectors, n, int(opts["clusters"]),
                                               float(opts["cluster_cap"]), ctx.seed)
        elif self.difficulty == "quota":
            picks = shaping.level_quota(order, ctx.level, n, opts["quota"])
        else:
            picks = order[:n]
        return _take(ctx, np.asarray(picks, dtype=np.int64), n, self.name, "scored (non-zero-gradient)")


SHAPED_POLICIES = (
    ShapedInfluencePolicy("influence-quota", difficulty="quota"),
    ShapedInfluencePolicy("influence-window", difficulty="window"),
    ShapedInfluencePolicy("influence-mmr", diversity="mmr"),
    ShapedInfluencePolicy("influence-cap", diversity="cap"),
    ShapedInfluencePolicy("influence-window-mmr", difficulty="window", diversity="mmr"),
)
"""The difficulty- and diversity-aware influence policies (off by default: ``select.policy``
stays ``influence``)."""


class FullPolicy:
    """Every prompt of the pool, in pool order (``n`` is ignored)."""

    name = "full"

    def select(self, ctx: SelectionContext, n: int) -> list[str]:
        return list(ctx.ids)


POLICIES: Registry[SelectionPolicy] = Registry("selection policy")
"""Selection policies by name (``select.policy``). Facts a policy may carry (read with
:func:`policy_fact`; defaults for policies registered without them): ``needs_scores`` (selects by
the stage's influence scores), ``rollout_sets`` (which of beta's rollouts it reads: ``pool`` pass
rates, ``targets``), ``seeded`` (uses ``select.seed``), ``needs_target_sources`` (the target sets'
families), ``uses_options`` (reads ``select.options``: the policy has ``options(dict)``, which
resolves them, and ``space(dict)``, the vectors it needs: embedding, gradient or None)."""

FACT_DEFAULTS: dict[str, Any] = {"needs_scores": False, "rollout_sets": (), "seeded": False,
                                 "needs_target_sources": False, "uses_options": False}


def register_policy(policy: SelectionPolicy) -> SelectionPolicy:
    """Add a policy to the registry; a second policy with the same name is an error."""
    if not isinstance(policy, SelectionPolicy):
        raise TypeError(f"{policy!r} is not a SelectionPolicy (needs .name and .select(ctx, n))")
    return POLICIES.register(policy.name, policy)


def get_policy(name: str) -> SelectionPolicy:
    """The registered policy called ``name``."""
    return POLICIES.get(name, field="select.policy")


def available_policies() -> list[str]:
    """Names of the registered policies, in registration order."""
    return POLICIES.names()


def policy_fact(name: str, fact: str) -> Any:
    """A fact of the registered policy ``name`` (:data:`FACT_DEFAULTS` when it carries none or
    is not registered in this process, e.g. a report of a run made with a policy from Python)."""
    if name not in POLICIES:
        return FACT_DEFAULTS[fact]
    return getattr(POLICIES.get(name), fact, FACT_DEFAULTS[fact])


def select_ids(policy: str | SelectionPolicy, ctx: SelectionContext, n: int) -> list[str]:
    """Run ``policy`` (a name or an object) on ``ctx`` with budget ``n``."""
    pol = get_policy(policy) if isinstance(policy, str) else policy
    return pol.select(ctx, n)


for _policy in (InfluencePolicy(), RandomPolicy(), PassRatePolicy(), LearnabilityPolicy(),
                FullPolicy(), OraclePolicy(), *SHAPED_POLICIES):
    register_policy(_policy)
del _policy

__all__ = [
    "SelectionContext", "SelectionPolicy", "budget", "InfluencePolicy", "RandomPolicy",
    "PassRatePolicy", "LearnabilityPolicy", "FullPolicy", "OraclePolicy", "ShapedInfluencePolicy",
    "SHAPED_POLICIES", "register_policy", "get_policy",
    "available_policies", "select_ids", "POLICIES", "policy_fact",
]
