"""The summary of benchmarks/selection_cost.py: enrichment, overlaps and speed-ups from its cells.

A cell is one stage-0 *draw* (``{config}-r{seed}``: a configuration with one rollout seed) or one
stage-1 re-scoring (``stage1-...``), as the benchmark stores it: ``seconds`` and ``work`` by part,
``picks``, ``seed`` and the compact score table of its stage (:func:`compact_scores`), so a later
working block can summarize without the run folders (cells measured before the table was stored
are read from their run folders). :func:`summarize` turns a suite's cells
into the acceptance's fields (``speedup_stage0``, ``speedup_stage1``, ``enrichment_today`` with its
lower end, ``enrichment_new``, ``overlap_new_vs_today``, ``noise_floor_overlap``) and the details
behind them; the pick metrics are :mod:`cropi.report.selection_quality`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from cropi.bench.selection_cells import family_of, suite_spec
from cropi.report.selection_quality import (
    fused_rule,
    overlap,
    pair_overlaps,
    selection_metrics,
)

BOOT = 1000
"""Bootstrap resamples of the pool behind each enrichment interval."""


def pick_metrics(suite: str, draws: dict[str, dict[str, Any]], stage: int,
                 pooled: list[str] | None = None) -> dict[str, Any]:
    """Fused enrichment with its interval per draw (``{label: draw}``), and the mean over the draws
    named in ``pooled`` with its interval (``enrichment_mean_halves``). The
    bootstrap resamples of the pool come from a generator seeded afresh at every call, so an
    interval does not depend on which cells were summarized before it."""
    spec = suite_spec(suite, None)
    fam, _ = family_of(spec)
    tables = {d: draw_scores(v, stage) for d, v in draws.items()}
    ids = next(iter(tables.values()))["ids"]
    src = np.asarray(next(iter(tables.values()))["source"], dtype=object)
    relevant = np.isin(src, np.asarray(sorted(set(fam.values())), dtype=object))
    per_target: dict[str, dict[str, np.ndarray]] = {}
    zero = {}
    for d, t in tables.items():
        assert t["ids"] == ids, "draws of one suite share the pool order"
        for target, values in t["targets"].items():
            per_target.setdefault(target, {})[d] = np.array([np.nan if v is None else v for v in values])
        zero[d] = np.isin(np.arange(len(ids)), t["zero"])
    n = len(next(iter(draws.values()))["picks"])
    boot = np.random.default_rng(0).integers(0, len(ids), size=(BOOT, len(ids)))
    res = selection_metrics(fused_rule(per_target, n), list(draws), zero, relevant, None, n, boot, None,
                            pooled=pooled or ())
    res.pop("bootstrap", None)
    return res


def compact_scores(run_root: str | Path, stage: int) -> dict[str, Any]:
    """What the summaries need of a stage's score table, small enough for the result file (so a
    later working block, whose machine no longer has the run, can summarize the cell): the pool's
    ids and families in table order, the positions with a zero gradient, each target's scores
    (None where NaN)."""
    from cropi.influence.scores import read_scores, target_scores

    table = read_scores(Path(run_root) / "stages" / f"stage_{stage:03d}" / "scores.parquet")
    ids = [str(i) for i in table.column("id").to_pylist()]
    zero = np.asarray(table.column("zero_grad").to_pylist(), dtype=bool)
    return {"ids": ids, "source": [str(x) for x in table.column("source").to_pylist()],
            "zero": np.flatnonzero(zero).tolist(),
            "targets": {t: [None if not np.isfinite(x) else float(x) for x in v]
                        for t, v in target_scores(table, ids).items()}}


def draw_scores(cell: dict[str, Any], stage: int) -> dict[str, Any]:
    """A cell's :func:`compact_scores` of ``stage`` (the cell's own stage): stored in the cell (stage-0
    draws and stage-1 cells of later versions), else read from its run folder."""
    return cell["scores"] if "scores" in cell else compact_scores(cell["run"], stage)


def positions(ids: list[str], picks: list[str]) -> np.ndarray:
    """Each pick's position in the pool order ``ids``."""
    index = {i: p for p, i in enumerate(ids)}
    return np.array([index[i] for i in picks], dtype=np.int64)


def draws_of(cells: dict[str, Any], config: str) -> dict[str, dict[str, Any]]:
    """A configuration's finished stage-0 draws, ``{label: cell}`` in seed order."""
    seeds = sorted(int(k.rsplit("-r", 1)[1]) for k in cells if k.startswith(f"{config}-r") and k[len(config) + 2:].isdigit())
    return {f"{config}-r{i}": cells[f"{config}-r{i}"] for i in seeds}


def summarize(suite: str, cells: dict[str, Any], configs: Iterable[str], recommended: str
              ) -> dict[str, Any] | None:
    """Per configuration: speed-ups of its seed-1 draw over today's seed-0 draw (seconds and work;
    in seconds also of each of its draws),
    enrichment (mean over its draws), overlap with today's picks (mean over pairs of draws with
    different seeds); the noise floor (mean over pairs of today's draws); stage 1 when measured.
    With today's seeds 0 and 1 and one draw of each other configuration (``--draws 2``) every
    mean is over one pair or draw. ``recommended`` names the configuration whose numbers go into
    ``summary`` (the acceptance's fields)."""
    today = draws_of(cells, "today")
    if not {"today-r0", "today-r1"} <= today.keys():
        return None
    today0 = today["today-r0"]
    n = len(today0["picks"])
    ids = pool_ids(today0)
    seeded = {k: (v["seed"], v["picks"]) for k, v in today.items()}
    floor_pairs = pair_overlaps(seeded, seeded, n)
    floor = float(np.mean(list(floor_pairs.values())))
    base = pick_metrics(suite, today, 0, pooled=list(today))
    out: dict[str, Any] = {"noise_floor_overlap": floor, "noise_floor_pairs": floor_pairs,
                           "enrichment_today": base["enrichment_mean_halves"],
                           "enrichment_today_ci": base["enrichment_mean_halves_ci"], **target_shares(base, "today"),
                           "configs": {}}
    for config in configs:
        mine = {k: v for k, v in draws_of(cells, config).items() if v["seed"] >= 1}
        cell = mine.get(f"{config}-r1")
        if cell is None:
            continue
        m = pick_metrics(suite, mine, 0, pooled=list(mine))
        ov_pairs = pair_overlaps({k: (v["seed"], v["picks"]) for k, v in mine.items()}, seeded, n)
        ov = float(np.mean(list(ov_pairs.values())))
        out["configs"][config] = {
            "speedup_seconds": today0["seconds"]["total"] / cell["seconds"]["total"],
            "speedup_seconds_by_draw": {k: today0["seconds"]["total"] / v["seconds"]["total"] for k, v in mine.items()},
            "speedup_work_generated": work_ratio(today0, cell, "tokens_generated"),
            "speedup_work_backward": work_ratio(today0, cell, "tokens_backward"),
            "seconds": cell["seconds"], "draws": list(mine),
            "enrichment": m["enrichment_mean_halves"], "enrichment_ci": m["enrichment_mean_halves_ci"],
            "n_grad": m["per_draw"][f"{config}-r1"]["n_grad"], **target_shares(m),
            "overlap_vs_today": ov, "overlap_vs_today_pairs": ov_pairs,
        }
    rec = out["configs"].get(recommended)
    summary: dict[str, Any] = {"recommended": recommended, "noise_floor_overlap": floor,
                               "enrichment_today": out["enrichment_today"],
                               "enrichment_today_lo": out["enrichment_today_ci"][0],
                               "draws_today": len(today)}
    if rec is not None:
        summary.update(speedup_stage0=rec["speedup_seconds"], enrichment_new=rec["enrichment"],
                       overlap_new_vs_today=rec["overlap_vs_today"], draws_new=len(rec["draws"]))
    s1_today, s1_full, s1_short = (cells.get(k) for k in ("stage1-today-r0", f"stage1-{recommended}-r1",
                                                          f"stage1-{recommended}-r1-shortlist"))
    if s1_today and s1_full:  # the recommended configuration re-scores the whole pool
        summary["speedup_stage1"] = s1_today["seconds"]["total"] / s1_full["seconds"]["total"]
        out["stage1"] = {"today_seconds": s1_today["seconds"], "new_seconds": s1_full["seconds"],
                         "speedup_work_backward": work_ratio(s1_today, s1_full, "tokens_backward")}
        if s1_short:
            out["stage1"].update(shortlist_seconds=s1_short["seconds"],
                                 speedup_shortlist=s1_today["seconds"]["total"] / s1_short["seconds"]["total"])
            out["stage1"]["shortlist_overlap_vs_full"] = overlap(
                positions(ids, s1_full["picks"]), positions(ids, s1_short["picks"]), n)
            m = pick_metrics(suite, {"full": s1_full, "shortlist": s1_short}, 1)["per_draw"]
            out["stage1"]["enrichment_full"] = m["full"]["enrichment"]
            out["stage1"]["enrichment_shortlist"] = m["shortlist"]["enrichment"]
    out["summary"] = summary
    return out


def target_shares(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The parts of the enrichment ratio, each a mean over the draws of :func:`pick_metrics`'s
    ``metrics``: the share of the picks in the target sets' families (``target_share_picks``), that
    share among the pool prompts with a gradient (``target_share_grad``: the ratio's denominator,
    which the sampling settings move) and among the whole pool (``target_share_pool``)."""
    per = metrics["per_draw"].values()
    key = f"{prefix}_" if prefix else ""
    return {f"{key}target_share_picks": float(np.mean([d["share"] for d in per])),
            f"{key}target_share_grad": float(np.mean([d["share_grad"] for d in per])),
            f"{key}target_share_pool": float(np.mean([d["share_pool"] for d in per]))}


def work_ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    """``a``'s total counted ``key`` (e.g. ``tokens_generated``) over ``b``'s; None where ``b`` has none."""
    x, y = a["work"]["total"].get(key, 0), b["work"]["total"].get(key, 0)
    return x / y if y else None


def pool_ids(cell: dict[str, Any]) -> list[str]:
    """The pool's ids in the order of a stage-0 draw's score table."""
    return list(draw_scores(cell, 0)["ids"])
