"""What a selection picks and why: per-prompt measures of the selection against the pool.

numpy only (the select phase computes the measures from rollouts, feature stores and hidden
states, and hands them in as arrays). For each measure (entropy, pass rate, difficulty level,
similarity to each target set in embedding and in gradient space) the selection's mean is
compared with two reference groups:

- ``gradient``: the pool prompts with a gradient (mixed rewards under beta: ``0 < p < 1``), the
  prompts an influence selection can pick at all. Every influence pick has mixed rewards, so
  against the whole pool its entropy and pass rate differ by construction; against these prompts
  they differ only by what the ranking prefers.
- ``pool``: every pool prompt.

For each group: the difference of means (selected minus group) with a two-sided permutation
p-value against *random picks*: ``n_perm`` draws of as many prompts as the selection has values,
without replacement from the group; p = (1 + #draws whose mean is at least as far from the group
mean as the selection's) / (1 + n_perm). The 2.5-97.5 % range of the random picks' means is
stored (``random_lo``, ``random_hi``: where a random selection of that size lands), and the 95 %
interval of the difference is that range inverted (``diff - (random_hi - group)`` to ``diff -
(random_lo - group)``: the noise of a selection of that size from that group, so the interval
excludes 0 about when p < 0.05). The selection's own mean has a bootstrap interval over its
prompts (``selected_lo``, ``selected_hi``; with few picks it is narrow, a description of their
spread rather than a test). Prompts with an unknown value (NaN) are left out of every mean.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

N_BOOT = 2000
N_PERM = 2000
MEASURES_DOC: dict[str, str] = {
    "entropy_beta": "beta's mean token negative log-probability of its own sampled tokens (nats; "
                    "the stored teacher-forced fp32 log-probs, untempered, of responses sampled at "
                    "rollout.temperature: a one-sample estimate of the cross-entropy, not the "
                    "full-distribution entropy)",
    "nll_current": "the stage's policy's mean token negative log-probability of beta's stored "
                   "responses (stages > 0, from the drift measures)",
    "pass_rate_beta": "beta's pass rate (share of the K stored responses rewarded 1)",
    "pass_rate_current": "the stage's policy's pass rate estimated from beta's responses by "
                         "self-normalised importance weights (stages > 0, from the drift measures), or "
                         "measured on re-sampled responses where the stage re-sampled the prompt",
    "level": "ordinal difficulty level (the number in level labels such as L2 or d3)",
    "similarity_embedding": "cosine of the prompt's embedding with the target set's mean embedding, "
                            "both centred by the pool's mean embedding",
    "similarity_gradient": "cosine of the prompt's projected POPI gradient with the target set's mean "
                           "projected gradient (for the paper scorer: the influence score itself)",
}
ORDER = ("pass_rate_beta", "pass_rate_current", "level", "entropy_beta", "nll_current",
         "similarity_embedding", "similarity_gradient")
_ORDINAL = re.compile(r"^[A-Za-z_-]*?(\d+)$")


@dataclass
class PromptMeasures:
    """Per-prompt measures ``{name: [n]}`` (NaN: unknown) and how they were made (``notes``).

    Names are keys of :data:`MEASURES_DOC`, similarities suffixed with ``/<target>``
    (``similarity_embedding/chain``).
    """

    values: dict[str, np.ndarray] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, values: Sequence[float] | np.ndarray | None) -> None:
        if values is not None:
            self.values[name] = np.asarray(values, dtype=np.float64)


def measure_order(names: Sequence[str]) -> list[str]:
    """``names`` in display order (:data:`ORDER`, then by target; JSON files keep keys sorted)."""
    def key(name: str) -> tuple[int, str]:
        base, _, target = name.partition("/")
        return (ORDER.index(base) if base in ORDER else len(ORDER), target or base)
    return sorted(names, key=key)


def ordinal_levels(levels: Sequence[str | None]) -> np.ndarray | None:
    """The number in each level label (``L1``, ``d3``, ``2``) as floats, NaN for no level; None
    when any label has no trailing number (categorical labels such as easy / hard are not an
    order) or no prompt has a level."""
    out = np.full(len(levels), np.nan)
    seen = False
    for i, lev in enumerate(levels):
        if lev is None or str(lev) in ("", "none", "None"):
            continue
        m = _ORDINAL.match(str(lev))
        if m is None:
            return None
        out[i] = float(m.group(1))
        seen = True
    return out if seen else None


def centred_cosine(vectors: np.ndarray, reference: np.ndarray, centre: np.ndarray | None) -> np.ndarray:
    """Cosine of each row of ``vectors [n, d]`` with ``reference [d]``, both minus ``centre``
    (None: not centred); NaN for all-zero rows."""
    v = np.asarray(vectors, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if centre is not None:
        v = v - centre
        r = r - centre
    norms = np.linalg.norm(v, axis=1) * np.linalg.norm(r)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (v @ r) / norms
    return np.where(norms > 0, cos, np.nan)


def similarity_to_targets(pool: np.ndarray, targets: Mapping[str, np.ndarray],
                          centre: bool = True) -> dict[str, np.ndarray]:
    """``{target: [n]}``: cosine of each pool row with the target set's mean row.

    ``centre``: subtract the pool's mean row from both first (language-model hidden states share a
    large common direction that would put every raw cosine near 1; centring keeps what differs).
    """
    pool = np.asarray(pool, dtype=np.float64)
    mid = pool.mean(axis=0) if centre and pool.shape[0] else None
    return {name: centred_cosine(pool, np.asarray(t, dtype=np.float64).mean(axis=0), mid)
            for name, t in targets.items()}


def _random_means(values: np.ndarray, size: int, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_perm]`` means of ``size`` of ``values`` drawn without replacement (random subsets)."""
    n = values.size
    if n * n_perm <= 20_000_000:  # the ``size`` smallest of uniform keys: a uniform random subset
        idx = np.argpartition(rng.random((n_perm, n)), size - 1, axis=1)[:, :size]
        return values[idx].mean(axis=1)
    return np.array([values[rng.choice(n, size, replace=False)].mean() for _ in range(n_perm)])


def compare(values: np.ndarray, selected: np.ndarray, group: np.ndarray, *, n_boot: int = N_BOOT,
            n_perm: int = N_PERM, seed: int = 0) -> dict[str, Any] | None:
    """The selection's mean of ``values [n]`` against the mean of the positions in ``group``.

    ``selected``, ``group``: positions. NaN values are left out. Returns None when the selection
    or the group has no value. Keys: ``selected``, ``selected_lo/hi`` (bootstrap), ``group``,
    ``diff`` (selected - group), ``diff_lo/hi`` (the random picks' range inverted), ``p``
    (permutation vs random picks from the group), ``random_lo/hi`` (95 % range of a random pick's
    mean), ``n_selected``, ``n_group``.
    """
    values = np.asarray(values, dtype=np.float64)
    sel = values[np.asarray(selected, dtype=np.int64)]
    sel = sel[np.isfinite(sel)]
    grp = values[np.asarray(group, dtype=np.int64)]
    grp = grp[np.isfinite(grp)]
    if sel.size == 0 or grp.size == 0:
        return None
    rng = np.random.default_rng(seed)
    mean_s, mean_g = float(sel.mean()), float(grp.mean())
    boot = sel[rng.integers(0, sel.size, size=(n_boot, sel.size))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    size = min(sel.size, grp.size)
    rand = _random_means(grp, size, n_perm, rng)
    extreme = np.abs(rand - mean_g) >= abs(mean_s - mean_g) - 1e-12
    r_lo, r_hi = np.percentile(rand, [2.5, 97.5])
    diff = mean_s - mean_g
    return {"selected": mean_s, "selected_lo": float(lo), "selected_hi": float(hi), "group": mean_g,
            "diff": diff, "diff_lo": diff - (float(r_hi) - mean_g), "diff_hi": diff - (float(r_lo) - mean_g),
            "p": float((1 + np.count_nonzero(extreme)) / (1 + n_perm)),
            "random_lo": float(r_lo), "random_hi": float(r_hi),
            "n_selected": int(sel.size), "n_group": int(grp.size)}


def gradient_positions(pass_rate: np.ndarray) -> np.ndarray:
    """Positions of the prompts with a gradient under beta: mixed rewards, 0 < p < 1."""
    p = np.asarray(pass_rate, dtype=np.float64)
    return np.flatnonzero((p > 0) & (p < 1))


def selection_analysis(pass_rate: np.ndarray, selected: np.ndarray, measures: PromptMeasures, *,
                       n_boot: int = N_BOOT, n_perm: int = N_PERM, seed: int = 0) -> dict[str, Any]:
    """Every measure of ``measures`` (and beta's pass rate) compared with the prompts with a
    gradient and with the whole pool: ``{"measures": {name: {"gradient": compare(...), "pool":
    compare(...)}}, "n_gradient", "n_pool", "definitions", "notes", "method"}`` (JSON values)."""
    pass_rate = np.asarray(pass_rate, dtype=np.float64)
    n = pass_rate.shape[0]
    grad = gradient_positions(pass_rate)
    every = np.arange(n)
    values = {"pass_rate_beta": pass_rate, **measures.values}
    out: dict[str, Any] = {}
    for i, (name, vals) in enumerate(values.items()):
        if vals.shape != (n,):
            raise ValueError(f"measure {name!r} has shape {vals.shape}, the pool has {n} prompts")
        row = {"gradient": compare(vals, selected, grad, n_boot=n_boot, n_perm=n_perm, seed=seed + 2 * i),
               "pool": compare(vals, selected, every, n_boot=n_boot, n_perm=n_perm, seed=seed + 2 * i + 1)}
        if row["gradient"] is not None or row["pool"] is not None:
            out[name] = row
    return {
        "measures": out,
        "n_pool": n,
        "n_gradient": int(grad.size),
        "definitions": {k.split("/")[0]: MEASURES_DOC[k.split("/")[0]] for k in out
                        if k.split("/")[0] in MEASURES_DOC},
        "notes": dict(measures.notes),
        "method": (f"difference of means, selected minus group, with a two-sided permutation p-value "
                   f"against {n_perm} random picks of the same size from the group and a 95 % interval "
                   f"from the same random picks (their 2.5-97.5 % range around the group mean, "
                   f"inverted); the selected mean's interval is a bootstrap over the selected prompts "
                   f"({n_boot} replicates)"),
    }


__all__ = ["MEASURES_DOC", "ORDER", "PromptMeasures", "centred_cosine", "compare", "gradient_positions",
           "measure_order", "ordinal_levels", "selection_analysis", "similarity_to_targets"]
