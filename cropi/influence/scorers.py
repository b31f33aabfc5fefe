"""Scorer variants: how a pool prompt's projected gradient is compared with a target set's.

Every scorer is pure numpy in float64 and is selected by a name (:data:`SCORERS`, :func:`score`).
Shapes used throughout:

- ``pool_feats [n, k]``: projected POPI gradients g~(s) of the pool (any float dtype);
- ``zero_grad [n]`` bool: True where the prompt's gradient is zero (all rewards equal); such rows,
  and rows that are all zeros, get NaN in every score and are ignored by every statistic below;
- ``target_means {target: [k]}``: g_bar_v, the mean of the target set's non-zero projected
  gradients (:func:`cropi.influence.scores.target_mean`);
- ``target_feats {target: [m_v, k]}`` (only where a scorer needs it): the target rows the mean was
  taken over (zero rows are dropped);
- result: ``{target: [n] float64}``, NaN for zero-gradient rows.

``cos(a, b) = a.b / (|a| |b|)``. Why variants: at stage 0 every prompt gradient shares a large
common direction (format / stopping) with the pool mean, and so do the target means, so the
``paper`` cosine partly measures that shared part; and a prompt's K=8 gradient is mostly rollout
noise. ``differential``, ``centred`` and ``unitmean`` address the first; ``knn`` and ``eb``
shrink the noise; ``source`` shrinks toward the prompt's family (its benefit cannot be judged by a
family-based enrichment, which uses the same label). :func:`ess` is a diagnostic of the
off-policy sequence weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cropi.influence.scores import cosine_scores
from cropi.utils.errors import CropiError
from cropi.utils.registry import Registry

Scores = dict[str, np.ndarray]
_CHUNK = 512


# ----------------------------------------------------------------------------------- helpers
def _valid_rows(pool_feats: np.ndarray, zero_grad: np.ndarray | None) -> np.ndarray:
    """[n] bool: rows with a signal (not in ``zero_grad`` and not all zeros)."""
    ok = np.any(pool_feats != 0, axis=1)
    if zero_grad is not None:
        zero_grad = np.asarray(zero_grad, dtype=bool)
        if zero_grad.shape != ok.shape:
            raise ValueError(f"zero_grad {zero_grad.shape} does not match {pool_feats.shape[0]} rows")
        ok &= ~zero_grad
    return ok


def _as_pool(pool_feats: np.ndarray) -> np.ndarray:
    pool_feats = np.asarray(pool_feats)
    if pool_feats.ndim != 2:
        raise ValueError(f"pool_feats must be [n, k], got {pool_feats.shape}")
    return pool_feats


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero), float64."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _target_rows(target_feats: Mapping[str, np.ndarray] | None, names: Sequence[str],
                 scorer: str) -> dict[str, np.ndarray]:
    if target_feats is None:
        raise CropiError(f"scorer {scorer!r} needs the target features (target_feats)")
    out = {}
    for t in names:
        if t not in target_feats:
            raise CropiError(f"scorer {scorer!r}: no target features for target {t!r}")
        rows = np.asarray(target_feats[t], dtype=np.float64)
        rows = rows[np.any(rows != 0, axis=1)]
        if rows.shape[0] == 0:
            raise CropiError(f"target {t!r} has no prompt with a non-zero gradient",
                             field="rollout.k_target", fix="increase k_target or use an easier target set")
        out[t] = rows
    return out


def _cos_rows(rows: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """cos of every row [n, k] with vec [k] (NaN for zero rows), float64, in row chunks."""
    vec = np.asarray(vec, dtype=np.float64)
    vn = np.linalg.norm(vec)
    if not vn > 0:
        raise CropiError("a target direction is zero (or non-finite)",
                         fix="use more target prompts or another scorer")
    out = np.empty(rows.shape[0])
    for s in range(0, rows.shape[0], _CHUNK):
        r = np.asarray(rows[s:s + _CHUNK], dtype=np.float64)
        norms = np.linalg.norm(r, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + len(r)] = (r @ vec) / (norms * vn)
        out[s:s + len(r)][norms == 0] = np.nan
    return out


# ----------------------------------------------------------------------------------- scorers
def paper(pool_feats: np.ndarray, zero_grad: np.ndarray | None,
          target_means: Mapping[str, np.ndarray]) -> Scores:
    """The paper's score: ``c_v(s) = cos(g~(s), g_bar_v)`` for every target v.

    Exactly :func:`cropi.influence.scores.cosine_scores` (it is called). ``[n, k] -> {v: [n]}``.
    """
    return cosine_scores(_as_pool(pool_feats), target_means, zero_grad)


def differential(pool_feats: np.ndarray, zero_grad: np.ndarray | None,
                 target_means: Mapping[str, np.ndarray], reduce: str = "mean") -> Scores:
    """Contrast with the other targets: ``d_v(s) = c_v(s) - R_{u != v} c_u(s)``.

    ``c`` is the paper cosine; ``R`` is the mean (``reduce="mean"``) or the max (``"max"``) over
    the other targets. Needs at least two targets. ``[n, k] -> {v: [n]}``. What the targets share
    (e.g. the common format direction) cancels; the score says "more like v than like the others".
    """
    if reduce not in ("mean", "max"):
        raise CropiError(f"differential: unknown reduce {reduce!r}", fix="use mean or max")
    if len(target_means) < 2:
        raise CropiError("the differential scorer needs at least two target sets",
                         field="score.scorer", fix="add a target set or use the centred scorer")
    c = paper(pool_feats, zero_grad, target_means)
    names = list(c)
    out = {}
    for v in names:
        others = np.stack([c[u] for u in names if u != v])
        red = others.mean(axis=0) if reduce == "mean" else others.max(axis=0)
        out[v] = c[v] - red
    return out


def pool_mean(pool_feats: np.ndarray, zero_grad: np.ndarray | None, unit: bool = False) -> np.ndarray:
    """``m = mean of g~(s)`` over the pool rows with a gradient (of ``g~/|g~|`` if ``unit``). [k]"""
    pool_feats = _as_pool(pool_feats)
    ok = _valid_rows(pool_feats, zero_grad)
    if not ok.any():
        raise CropiError("no pool prompt has a non-zero gradient: nothing to centre on",
                         field="rollout.k_pool", fix="increase k_pool or the temperature")
    rows = pool_feats[ok].astype(np.float64)
    return (_unit_rows(rows) if unit else rows).mean(axis=0)


def centred(pool_feats: np.ndarray, zero_grad: np.ndarray | None,
            target_means: Mapping[str, np.ndarray], target_feats: Mapping[str, np.ndarray] | None = None,
            unit: bool = False) -> Scores:
    """Cosine after removing the pool mean: ``cos(g~(s) - m, g_bar_v - m)``.

    ``m`` = :func:`pool_mean` over rows with a gradient. The projection is linear, so this equals
    the same centring in the full gradient space up to the projection's error. With ``unit=True``
    every pool and target gradient is first divided by its norm (``m`` = mean of unit pool rows,
    the target = mean of unit target rows, which needs ``target_feats``), so no prompt's scale
    weighs on the centre. ``[n, k] -> {v: [n]}``; NaN for zero-gradient rows.
    """
    pool_feats = _as_pool(pool_feats)
    ok = _valid_rows(pool_feats, zero_grad)
    m = pool_mean(pool_feats, zero_grad, unit=unit)
    if unit:
        tmeans = {t: _unit_rows(r).mean(axis=0)
                  for t, r in _target_rows(target_feats, list(target_means), "centred(unit)").items()}
    else:
        tmeans = {t: np.asarray(v, dtype=np.float64) for t, v in target_means.items()}
    out = {}
    for t, tm in tmeans.items():
        scores = np.full(pool_feats.shape[0], np.nan)
        for s in range(0, pool_feats.shape[0], _CHUNK):
            r = pool_feats[s:s + _CHUNK].astype(np.float64)
            r = (_unit_rows(r) if unit else r) - m
            scores[s:s + len(r)] = _cos_rows(r, tm - m)
        scores[~ok] = np.nan
        out[t] = scores
    return out


def unitmean(pool_feats: np.ndarray, zero_grad: np.ndarray | None,
             target_means: Mapping[str, np.ndarray], target_feats: Mapping[str, np.ndarray] | None = None
             ) -> Scores:
    """Cosine with the mean of UNIT target gradients: ``cos(g~(s), mean_q g~(q)/|g~(q)|)``.

    ``target_feats {v: [m_v, k]}`` are the target rows (zero rows dropped); ``target_means`` only
    names the targets. Every target prompt weighs the same, whatever its gradient norm.
    ``[n, k] -> {v: [n]}``.
    """
    rows = _target_rows(target_feats, list(target_means), "unitmean")
    return cosine_scores(_as_pool(pool_feats), {t: _unit_rows(r).mean(axis=0) for t, r in rows.items()},
                         zero_grad)


# ------------------------------------------------------------------- variance reduction
def knn_neighbours(pool_feats: np.ndarray, zero_grad: np.ndarray | None, neighbours: int,
                   space: str = "centred") -> np.ndarray:
    """``[n, neighbours]`` int: for each row with a gradient, the rows with a gradient of highest
    cosine similarity (itself excluded; ties: lower index first); -1 for zero rows.

    ``space="centred"``: similarity of ``g~ - m`` (pool mean removed, so the shared direction does
    not make everything a neighbour); ``"raw"``: of ``g~``. Computed in row chunks.
    """
    pool_feats = _as_pool(pool_feats)
    ok = _valid_rows(pool_feats, zero_grad)
    idx = np.flatnonzero(ok)
    out = np.full((pool_feats.shape[0], neighbours), -1, dtype=np.int64)
    if idx.size < 2 or neighbours < 1:
        return out
    x = pool_feats[idx].astype(np.float64)
    if space == "centred":
        x = x - x.mean(axis=0)
    elif space != "raw":
        raise CropiError(f"knn: unknown space {space!r}", fix="use centred or raw")
    u = _unit_rows(x)
    kk = min(neighbours, idx.size - 1)
    for s in range(0, idx.size, _CHUNK):
        sim = u[s:s + _CHUNK] @ u.T
        sim[np.arange(sim.shape[0]), np.arange(s, s + sim.shape[0])] = -np.inf
        # stable: sort by -sim, ties by column index
        order = np.argsort(-sim, axis=1, kind="stable")[:, :kk]
        out[idx[s:s + sim.shape[0]], :kk] = idx[order]
    return out


def knn(pool_feats: np.ndarray, zero_grad: np.ndarray | None, target_means: Mapping[str, np.ndarray],
        base: str = "centred", neighbours: int = 5, lam: float = 0.5, space: str = "centred",
        base_opts: Mapping[str, Any] | None = None, **context: Any) -> Scores:
    """Label-free shrinkage toward feature-space neighbours:
    ``s'(i) = (1 - lam) s(i) + lam * mean_{j in N(i)} s(j)``.

    ``s`` = the ``base`` scorer's scores; ``N(i)`` = the ``neighbours`` (default 5) pool rows with a
    gradient most cosine-similar to row i (:func:`knn_neighbours`, ``space`` centred by default).
    Averages out each prompt's own rollout noise where its neighbours carry the same signal.
    ``[n, k] -> {v: [n]}``; NaN for zero rows.
    """
    if not 0 <= lam <= 1:
        raise CropiError(f"knn: lam must be in [0, 1], got {lam}")
    s = score(base, pool_feats, zero_grad, target_means, **(base_opts or {}), **context)
    nb = knn_neighbours(pool_feats, zero_grad, neighbours, space)
    out = {}
    for t, v in s.items():
        res = v.copy()
        for i in np.flatnonzero(np.isfinite(v)):
            js = nb[i][nb[i] >= 0]
            if js.size:
                res[i] = (1 - lam) * v[i] + lam * np.mean(v[js])
        out[t] = res
    return out


def noise_proxy(n_correct: np.ndarray, n_responses: int | np.ndarray) -> np.ndarray:
    """Per-prompt noise proxy ``v = 1/n1 + 1/n0`` (n1 correct, n0 = K - n1 incorrect responses).

    With binary rewards the POPI gradient is proportional to (mean gradient of the correct
    responses) - (mean of the incorrect ones), whose sampling variance scales like v. inf where
    n1 or n0 is 0 (zero gradient). ``[n] -> [n]``.
    """
    n1 = np.asarray(n_correct, dtype=np.float64)
    n0 = np.asarray(n_responses, dtype=np.float64) - n1
    with np.errstate(divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), 1 / np.maximum(n1, 1e-300) + 1 / np.maximum(n0, 1e-300), np.inf)


def eb_shrink(s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Empirical-Bayes shrinkage of scores ``s [n]`` with noise proxies ``v [n]``.

    Model: ``s_i = theta_i + e_i``, ``theta_i ~ (mu, tau2)``, ``Var e_i = sigma2 * v_i``. Moments
    over the finite rows: ``mu`` = mean of s; ``tau2, sigma2`` = least squares of
    ``(s_i - mu)^2 = tau2 + sigma2 v_i``, clipped to ``>= 0`` (if ``tau2`` would be 0 it is set
    to 1e-12: then everything shrinks to mu). Posterior mean:
    ``theta_i = mu + tau2 / (tau2 + sigma2 v_i) * (s_i - mu)``. Returns (shrunk [n], fit).
    """
    s = np.asarray(s, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(v)
    out = np.full_like(s, np.nan)
    if ok.sum() < 3:
        out[ok] = s[ok]
        return out, {"mu": float("nan"), "tau2": float("nan"), "sigma2": float("nan")}
    mu = float(s[ok].mean())
    y = (s[ok] - mu) ** 2
    x = v[ok]
    if np.ptp(x) > 0:
        sigma2 = float(np.cov(x, y, bias=True)[0, 1] / np.var(x))
        sigma2 = max(sigma2, 0.0)
        tau2 = float(y.mean() - sigma2 * x.mean())
    else:  # no spread in v: noise and signal cannot be told apart; no shrinkage
        sigma2, tau2 = 0.0, float(y.mean())
    if tau2 <= 0:
        tau2 = 1e-12
        sigma2 = max(sigma2, float(y.mean() / x.mean()))
    out[ok] = mu + tau2 / (tau2 + sigma2 * x) * (s[ok] - mu)
    return out, {"mu": mu, "tau2": tau2, "sigma2": sigma2}


def eb(pool_feats: np.ndarray, zero_grad: np.ndarray | None, target_means: Mapping[str, np.ndarray],
       n_correct: np.ndarray | None = None, n_responses: int | np.ndarray | None = None,
       base: str = "centred", base_opts: Mapping[str, Any] | None = None, **context: Any) -> Scores:
    """Uncertainty-weighted (empirical-Bayes) scores: the ``base`` scores shrunk toward their mean
    by each prompt's noise proxy ``v = 1/n1 + 1/n0`` (:func:`noise_proxy`, :func:`eb_shrink`).

    Needs ``n_correct [n]`` and ``n_responses`` (K, int or [n]). No extra gradients: the noise
    model uses only the reward counts, so prompts with few correct (or few incorrect) responses
    are trusted less. ``[n, k] -> {v: [n]}``.
    """
    if n_correct is None or n_responses is None:
        raise CropiError("the eb scorer needs each prompt's reward counts (n_correct, n_responses)")
    s = score(base, pool_feats, zero_grad, target_means, **(base_opts or {}), **context)
    v = noise_proxy(n_correct, n_responses)
    return {t: eb_shrink(x, v)[0] for t, x in s.items()}


def source(pool_feats: np.ndarray, zero_grad: np.ndarray | None, target_means: Mapping[str, np.ndarray],
           sources: Sequence[str] | None = None, base: str = "centred", lam: float = 0.5,
           base_opts: Mapping[str, Any] | None = None, **context: Any) -> Scores:
    """Shrinkage toward the prompt's family: ``s'(i) = (1 - lam) s(i) + lam * mean_{j != i,
    source_j = source_i} s(j)`` over rows with a gradient (unchanged when i is alone).

    Uses the ``source`` label, so an enrichment measured by that same label cannot judge it; its
    stability can be. ``sources [n]``. ``[n, k] -> {v: [n]}``.
    """
    if sources is None:
        raise CropiError("the source scorer needs each pool prompt's source (family)")
    src = np.asarray([str(x) for x in sources])
    s = score(base, pool_feats, zero_grad, target_means, **(base_opts or {}), **context)
    out = {}
    for t, v in s.items():
        res = v.copy()
        fin = np.isfinite(v)
        for fam in np.unique(src[fin]):
            rows = np.flatnonzero(fin & (src == fam))
            if rows.size < 2:
                continue
            tot = v[rows].sum()
            res[rows] = (1 - lam) * v[rows] + lam * (tot - v[rows]) / (rows.size - 1)
        out[t] = res
    return out


# ------------------------------------------------------------------------------- diagnostics
def ess(logw: np.ndarray) -> np.ndarray:
    """Normalised effective sample size of importance weights, from log weights.

    ``logw [..., K]``: per-response log sequence weights ``log w_k = sum_t (log pi_theta -
    log beta)``; NaN entries are ignored (ragged K). Returns ``[...]``:
    ``ESS/K = (sum_k w_k)^2 / (K sum_k w_k^2)`` in [1/K, 1], computed as
    ``exp(2 LSE(logw) - LSE(2 logw)) / K`` with the maximum subtracted (no overflow). Equal
    weights give 1; one dominant weight 1/K. NaN where no entry is finite.
    """
    lw = np.asarray(logw, dtype=np.float64)
    fin = np.isfinite(lw)
    k = fin.sum(axis=-1)
    mx = np.max(np.where(fin, lw, -np.inf), axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    z = np.where(fin, lw - mx, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse1 = np.log(np.sum(np.exp(z), axis=-1))
        lse2 = np.log(np.sum(np.exp(2 * z), axis=-1))
        out = np.exp(2 * lse1 - lse2) / k
    return np.where(k > 0, out, np.nan)


def sequence_logw(logp_theta: Sequence[np.ndarray], logp_beta: Sequence[np.ndarray]) -> np.ndarray:
    """``[K]`` log sequence weights ``sum_t (log pi_theta - log beta)`` of K responses (per-token
    log-prob arrays of equal lengths per response)."""
    return np.asarray([float(np.sum(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
                       for a, b in zip(logp_theta, logp_beta, strict=True)])


# --------------------------------------------------------------------------------- registry
SCORERS: Registry[Callable[..., Scores]] = Registry("scorer")
"""Scorer names (``score.scorer``) and their functions."""
for _name, _fn in (("paper", paper), ("differential", differential), ("centred", centred),
                   ("unitmean", unitmean), ("knn", knn), ("eb", eb), ("source", source)):
    SCORERS.register(_name, _fn)
del _name, _fn

CONTEXT = ("target_feats", "n_correct", "n_responses", "sources")
"""Per-run data a scorer may need besides the features; :func:`score` passes each scorer only
the ones its signature names (composite scorers pass them on to their base)."""


def score(name: str, pool_feats: np.ndarray, zero_grad: np.ndarray | None,
          target_means: Mapping[str, np.ndarray], **kwargs: Any) -> Scores:
    """Run scorer ``name``: ``{target: [n] float64}`` (NaN for zero-gradient rows).

    ``kwargs``: context (:data:`CONTEXT`: ``target_feats``, ``n_correct``, ``n_responses``,
    ``sources``; silently dropped when the scorer does not use them) and the scorer's options
    (e.g. ``reduce``, ``unit``, ``base``, ``neighbours``, ``lam``; an unknown option is an error).
    """
    fn = SCORERS.get(name, field="score.scorer")
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    call = {}
    for key, value in kwargs.items():
        if key in params or (takes_any and key in CONTEXT):
            call[key] = value
        elif key in CONTEXT:
            continue
        else:
            raise CropiError(f"scorer {name!r} has no option {key!r}", field="score.scorer",
                             fix=f"options: {', '.join(p for p in params if p not in ('pool_feats', 'zero_grad', 'target_means', 'context') and p not in CONTEXT)}")
    return fn(_as_pool(pool_feats), zero_grad, target_means, **call)
