"""Cost-stability curve of influence scores: how stable are the stage-0 picks as K grows?

Reads two or more finished cells of :mod:`selection_quality` that differ only in the rollout seed
(``--rollout-seed 0`` and ``1``: independent K=16 draws of every pool and target prompt, scored
with the same projection), and builds from their stored per-group gradient sums:

- K = 8 draws: the two halves of every cell (4 independent draws from 2 cells),
- K = 16 draws: every cell's 16 responses (2 draws),
- K = 32: all responses of two cells pooled (1 draw: enrichment only),

each pool and target feature reconstructed exactly as the POPI gradient of those responses (the
advantages are recomputed over the responses pooled; projection is linear). Per K and scorer:

- stability between independent draws of the same K: the top-10 % overlap of the fused (RRF)
  picks, per-target top-10 % overlaps and per-target Spearman (prompts with a gradient in both),
  averaged over every pair of draws (6 pairs at K=8, 1 at K=16), with 95 % percentile bootstrap
  intervals over pool prompts (one resample shared by every pair);
- fused enrichment (the relevant share of the picks / their share among prompts with a gradient),
  the mean over the draws of that K;
- the Spearman-Brown prediction of the K=16 Spearman from the K=8 one, 2 rho / (1 + rho),
  next to the measured value, and its continuation to K = 32 and 64;
- the cost of one draw at each K, pro rata from the measured rollout, gradient and projection
  seconds of the K=16 cells (rollouts and one backward per response group scale with K).

    OMP_NUM_THREADS=1 python benchmarks/selection_quality.py --threads 1 --suite rg-numeric \\
        --temperature 0.5 --rollout-seed 1        # the second draw (the first is rollout seed 0)
    python benchmarks/stability_curve.py --suite rg-numeric --temperature 0.5

Writes benchmarks/results/stability_curve.json (one entry per suite and temperature). Only reads:
a cell that is not finished is reported with the command that computes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cropi.bench import lock_path, print_table, result_path, write_result
from cropi.bench.selection_cells import (Draw, cell_data, cell_dir, collect_cell, family_of, make_draws,
                                         run_scorers, suite_label, suite_spec)
from cropi.influence.group_sums import pooled_features
from cropi.report.selection_quality import ci95, overlap, rrf, spearman, top_n
from cropi.report.selection_quality import enrichment as fused_enrichment
from cropi.utils.locking import locked


def pooled_draw(name: str, cells: list[dict[str, Any]]) -> Draw:
    """One draw made of every response of ``cells``."""
    first = cells[0]
    pr = np.concatenate([c["pool_rewards"] for c in cells], axis=1)
    feats = pooled_features([c["pool_groups"] for c in cells], [c["pool_rewards"] for c in cells])
    tfe = {t: pooled_features([c["target_groups"][t] for c in cells], [c["target_rewards"][t] for c in cells])
           for t in first["targets"]}
    return Draw(name, feats, ~np.any(feats != 0, axis=1), pr.mean(1), pr.sum(1), pr.shape[1], tfe,
                {t: ~np.any(f != 0, axis=1) for t, f in tfe.items()}, first["pool_source"])


def fused_picks(per_t: dict[str, np.ndarray], rows: np.ndarray, n: int) -> set[int]:
    return set(top_n(rrf({t: s[rows] for t, s in per_t.items()}, n), n).tolist())


def pair_stats(si: dict[str, np.ndarray], sj: dict[str, np.ndarray], rows: np.ndarray, n: int,
               with_spearman: bool) -> dict[str, float]:
    """Fused and per-target overlaps (and Spearman) of two draws' scores on the pool rows ``rows``."""
    out = {"fused": len(fused_picks(si, rows, n) & fused_picks(sj, rows, n)) / n}
    for t in si:
        a, b = si[t][rows], sj[t][rows]
        out[f"overlap {t}"] = overlap(top_n(a, n), top_n(b, n), n)
        if with_spearman:
            out[f"rho {t}"] = spearman(a, b)
    return out


def enrichment(per_t: dict[str, np.ndarray], zero: np.ndarray, rel: np.ndarray, rows: np.ndarray,
               n: int) -> float:
    picks = np.fromiter(fused_picks(per_t, rows, n), dtype=int)
    return fused_enrichment(rows[picks], rel, zero, rows)


def curve(draws: dict[int, list[Draw]], labels: list[str], rel_any: np.ndarray, n: int,
          boot: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Per scorer label and K: mean pair stability and mean enrichment, with bootstrap CIs."""
    scores = {(k, d.name): run_scorers(d, args.target_max, args.score_seed)
              for k, ds in draws.items() for d in ds}
    allrows = np.arange(rel_any.size)
    out: dict[str, Any] = {}
    for lab in labels:
        res: dict[str, Any] = {}
        for k, ds in draws.items():
            per = {d.name: scores[(k, d.name)][lab] for d in ds}
            cell: dict[str, Any] = {"draws": [d.name for d in ds]}
            enr = [enrichment(per[d.name], d.zero, rel_any, allrows, n) for d in ds]
            enr_b = [np.mean([enrichment(per[d.name], d.zero, rel_any, rows, n) for d in ds])
                     for rows in boot]
            cell["enrichment_fused"] = float(np.mean(enr))
            cell["enrichment_fused_ci"] = ci95(np.array(enr_b))
            cell["enrichment_fused_per_draw"] = enr
            pairs = list(itertools.combinations([d.name for d in ds], 2))
            if pairs:
                point = [pair_stats(per[a], per[b], allrows, n, True) for a, b in pairs]
                keys = list(point[0])
                cell["pairs"] = {f"{a}~{b}": p for (a, b), p in zip(pairs, point)}
                cell["stability"] = {key: float(np.nanmean([p[key] for p in point])) for key in keys}
                bs = [[pair_stats(per[a], per[b], rows, n, True) for a, b in pairs]
                      for rows in boot[:args.n_boot_pairs]]
                cell["stability_ci"] = {key: ci95(np.array([np.nanmean([p[key] for p in b]) for b in bs]))
                                        for key in keys}
            res[f"K{k}"] = cell
        out[lab] = res
        print(f"  {lab} done ({time.strftime('%H:%M:%S')})", flush=True)
    return out


def spearman_brown(rho: float, factor: float) -> float:
    return factor * rho / (1 + (factor - 1) * rho)


def load_cells(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Data and timing of the finished cells, one per rollout seed; exits naming a missing one."""
    cells, timings = [], []
    label = suite_label(args.suite, args.cap)
    for seed in args.seeds:
        cdir = cell_dir(Path(args.work), label, args.temperature, args.k, seed)
        timing_file = cdir / "timing.json"
        cmd = (f"OMP_NUM_THREADS=1 python benchmarks/selection_quality.py --threads 1 --suite {args.suite}"
               + (f" --cap {args.cap}" if args.cap else "")
               + f" --temperature {args.temperature:g} --k {args.k} --rollout-seed {seed}")
        if not timing_file.exists():
            sys.exit(f"{cdir}: not computed; run first: {cmd}")

        def missing() -> Any:
            sys.exit(f"{cdir}: rollouts unfinished; run first: {cmd}")

        sets, _ = collect_cell(cdir, args.suite, cap=args.cap, suite_seed=args.suite_seed, k=args.k,
                               temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                               rollout_seed=seed, policy_fn=missing)
        if any(not (cdir / "groups" / name / f"{it.id}.npz").exists() for name, v in sets.items() for it in v):
            sys.exit(f"{cdir}: features unfinished; run first: {cmd}")
        data, cost = cell_data(sets, cdir / "groups", args.k // 2)
        cells.append(data)
        timing = json.loads(timing_file.read_text())
        timings.append({"rollout_s": timing.get("rollout_s"),
                        "grad_s": sum(c["grad_s"] for c in cost.values()),
                        "project_s": sum(c["project_s"] for c in cost.values())})
    return cells, timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="rg-numeric")
    ap.add_argument("--cap", type=int, default=None)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--k", type=int, default=16, help="responses per prompt of each cell")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="rollout seeds of the cells")
    ap.add_argument("--scorers", nargs="+", default=["paper", "centred-unit", "differential"],
                    help="labels of selection_quality's scorer grid")
    ap.add_argument("--work", default="runs/selection_quality")
    ap.add_argument("--out", default="stability_curve")
    ap.add_argument("--suite-seed", type=int, default=0)
    ap.add_argument("--score-seed", type=int, default=0)
    ap.add_argument("--target-max", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples (enrichment)")
    ap.add_argument("--n-boot-pairs", type=int, default=300, help="bootstrap resamples (pair stability)")
    ap.add_argument("--boot-seed", type=int, default=0)
    args = ap.parse_args()
    if len(args.seeds) < 2:
        ap.error("give at least two rollout seeds")
    t0 = time.perf_counter()
    cells, timings = load_cells(args)
    half = args.k // 2
    draws: dict[int, list[Draw]] = {half: [], args.k: []}
    for seed, data in zip(args.seeds, cells):
        made = make_draws(data, half)
        for h in ("A", "B"):
            draws[half].append(dataclasses.replace(made[h], name=f"r{seed}{h}"))
        draws[args.k].append(dataclasses.replace(made["full"], name=f"r{seed}"))
    draws[args.k * len(cells)] = [pooled_draw("+".join(f"r{s}" for s in args.seeds), cells)]
    src = cells[0]["pool_source"]
    fam, _ = family_of(suite_spec(args.suite, args.cap))
    rel_any = np.isin(src, list(fam.values()))
    n = max(1, round(0.10 * src.size))
    boot = np.random.default_rng(args.boot_seed).integers(0, src.size, size=(args.n_boot, src.size))
    res = curve(draws, args.scorers, rel_any, n, boot, args)
    per_response = float(np.mean([(t["rollout_s"] or np.nan) + t["grad_s"] + t["project_s"]
                                  for t in timings])) / args.k
    for lab, by_k in res.items():
        rho8 = by_k[f"K{half}"]["stability"]
        for t in fam:
            r = rho8[f"rho {t}"]
            by_k[f"K{half}"].setdefault("spearman_brown", {})[t] = {
                f"K{half * f}": spearman_brown(r, f) for f in (2, 4, 8)}
    entry = {"suite": suite_label(args.suite, args.cap), "temperature": args.temperature,
             "seeds": args.seeds, "budget": n, "n_pool": int(src.size),
             "n_grad": {k: [int((~d.zero).sum()) for d in ds] for k, ds in draws.items()},
             "relevant_families": fam, "cost_s_per_draw": {f"K{k}": per_response * k for k in draws},
             "cost_note": "pro rata per response from the K=16 cells' rollout + gradient + projection "
                          "seconds (one process, one thread); one backward per response group",
             "cell_timings": timings, "scorers": res, "wall_s": time.perf_counter() - t0}
    key = f"{entry['suite']}/T{args.temperature:g}/K{args.k}x{len(cells)}"
    with locked(lock_path(args.out)):
        path = result_path(args.out)
        prev = json.loads(path.read_text()).get("curves", {}) if path.exists() else {}
        prev[key] = entry
        path = write_result(args.out, {"args": vars(args), "curves": prev})
    heads = ["scorer", "K", "s/draw", "enrichment fused [CI]", "overlap fused [CI]"] + \
        [f"rho {t} (SB)" for t in fam]
    rows = []
    for lab, by_k in res.items():
        for kk, cell in by_k.items():
            ci = cell["enrichment_fused_ci"]
            st, sci = cell.get("stability", {}), cell.get("stability_ci", {})
            ov = "-" if not st else f"{st['fused']:.2f} [{sci['fused'][0]:.2f}, {sci['fused'][1]:.2f}]"
            rhos = []
            for t in fam:
                pred = by_k[f"K{half}"]["spearman_brown"][t].get(kk)
                rhos.append(("-" if f"rho {t}" not in st else f"{st[f'rho {t}']:.2f}")
                            + ("" if pred is None else f" ({pred:.2f})"))
            rows.append([lab, kk, f"{entry['cost_s_per_draw'][kk]:.0f}",
                         f"{cell['enrichment_fused']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]", ov] + rhos)
    print_table(heads, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
