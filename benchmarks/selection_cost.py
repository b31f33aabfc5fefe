"""What CROPI's stage selection costs, by part, today and with each cost lever.

A *draw* is one stage-0 selection made from scratch on a built-in suite: beta's rollouts of the
pool and the target sets (with the draw's rollout seed), POPI gradients and projection of every
prompt with a gradient, scores, the influence selection (10 %). Each draw is a cropi run under
``--work``; its parts are read from the run's own metrics (``rollouts`` per set, ``score``,
``drift``, ``selected``): seconds and the counted work (tokens generated, prefilled, forwarded,
backpropagated; ``cropi.utils.work``), so the speed-up can be checked on the work axis too, which
does not depend on the machine's load.

Configurations (:data:`CONFIGS`): ``today`` (the settings before the cost work, pinned) and
``new`` (the recommended one, today's defaults). Per suite: ``today`` with rollout seeds 0 and 1
(their top-10 % overlap is the noise floor: two of today's own draws), then ``new`` with seed 1,
compared with today's seed-0 draw (``overlap_new_vs_today``: different seeds, so it carries the
same noise as the floor). One pair of 11-13 picks each is a coarse estimate of either overlap
(a single pick moves it by 0.08-0.09): ``--draws N`` adds today's seeds 2..N-1 and the other
configurations' seeds 2..N-1, and both overlaps become means over every pair of draws with
different seeds (the pairs are kept). The speed-ups stay today's seed 0 over the configuration's
seed 1, timed back to back. Each lever alone is priced without sampling noise by the what-if cells
(``--what-if``: today's seed-0 responses cut to fewer per prompt, :data:`WHAT_IF`) and, for the
concatenated pass, by benchmarks/concat_pass.py.

Stage 1 (``--stage1``): stage 0's picks are trained for ``--steps`` GRPO steps (no evaluation),
then stage 1 is re-scored from beta's stored responses: today's whole pool (today's seed-0 draw)
against the new configuration's draw with ``score.shortlist`` (same checkpoint as its own full
re-scoring, which gives the shortlist's pick overlap without any sampling noise).

Enrichment (as in benchmarks/selection_quality.py): the share of picks from the target sets' own
families over that share among the pool prompts with a gradient, picks re-fused on each of 1,000
bootstrap resamples of the pool for the 95 % interval; a configuration's is the mean over its draws.

    OMP_NUM_THREADS=1 python benchmarks/selection_cost.py --threads 1 --stage1   # both suites
    OMP_NUM_THREADS=1 python benchmarks/selection_cost.py --suite rg-lcm-seq --what-if all
    OMP_NUM_THREADS=1 python benchmarks/selection_cost.py --suite rg-lcm-seq --draws 4   # overlaps over 4 draws
    # two processes, one per core, sharing a suite's cells:
    ... --suite default-small --stage1 --only today-r0,today-r1,stage1-today-r0

Resumable: every finished draw is written to benchmarks/results/selection_cost.json at once, so the
benchmark can span working blocks; a draw interrupted before it finished is refused when its cost
was not measured in one go (delete its folder under --work and rerun).
Seconds are only comparable between draws of one run on an otherwise idle machine: the result
keeps the 1-minute load average at each draw's start.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from cropi import api
from cropi.bench import load_result, print_table, write_result
from cropi.bench.results import lock_path, machine_kind
from cropi.bench.selection_cost_summary import (
    compact_scores,
    pick_metrics,
    pool_ids,
    positions,
    summarize,
)
from cropi.report.selection_quality import overlap
from cropi.utils.io import atomic_write_json, read_json, read_jsonl
from cropi.utils.locking import locked

NAME = "selection_cost"
CONFIGS: dict[str, dict[str, Any]] = {
    "today": {"gradient.concat_responses": False, "rollout.logprobs": "all", "rollout.logprob_pass": "always",
              "rollout.k_first": None, "rollout.k_target": 32, "score.shortlist": None},
    "new": {"gradient.concat_responses": True, "rollout.logprobs": "gradient", "rollout.logprob_pass": "auto",
            "rollout.k_first": 4, "rollout.k_target": 8, "score.shortlist": None},
}
"""Dotted config keys of each configuration: ``today`` the defaults before the cost work (padded
passes, every prompt K responses, K_target = 32, beta's log-probs from a teacher-forced pass),
``new`` the recommended one (today's defaults);
the stage-1 shortlist cell adds ``score.shortlist`` = :data:`SHORTLIST` to ``new``. Each lever
alone is priced by the what-if cells (sampling levers, on today's own responses) and
benchmarks/concat_pass.py (the concatenated pass)."""
WHAT_IF: dict[str, dict[str, int | None]] = {
    "full": {"k_pool": 8, "k_first": None, "k_target": 32},
    "ktarget8": {"k_pool": 8, "k_first": None, "k_target": 8},
    "adaptive-k4-ktarget8": {"k_pool": 8, "k_first": 4, "k_target": 8},
    "pool-k4-ktarget8": {"k_pool": 4, "k_first": None, "k_target": 8},
    "adaptive-k4": {"k_pool": 8, "k_first": 4, "k_target": 32},
    "adaptive-k2-ktarget8": {"k_pool": 8, "k_first": 2, "k_target": 8},
    "pool-k4-adaptive-k2-ktarget8": {"k_pool": 4, "k_first": 2, "k_target": 8},
    "ktarget16": {"k_pool": 8, "k_first": None, "k_target": 16},
    "ktarget4": {"k_pool": 8, "k_first": None, "k_target": 4},
    "pool-k4": {"k_pool": 4, "k_first": None, "k_target": 32},
    "adaptive-k2": {"k_pool": 8, "k_first": 2, "k_target": 32},
}
"""What-if cells (``--what-if``): today's seed-0 draw's own responses cut to fewer per prompt
(:mod:`cropi.bench.subsample`; ``k_first`` cuts the pool and the targets, as ``rollout.k_first``
samples both), scored and selected like a draw. Their picks differ from the draw's
only through the setting (no sampling noise between them); ``full`` re-scores the uncut copy."""
RECOMMENDED = "new"
SHORTLIST = 1.0
"""``score.shortlist`` of the stage-1 shortlist cell: the previous best budget, and as many low-ESS,
measured beside the whole pool's re-scoring with the same configuration (the recommended one: the
shortlist lowered the stage-1 picks' enrichment on default-small, 1.23 against 2.12)."""


# ------------------------------------------------------------------------------------ a draw
EXTRA: list[tuple[str, Any]] = []
"""``--set`` keys applied to every draw (a cheaper smoke run; the result file records them)."""


def draw_config(work: Path, suite: str, config: str, seed: int, steps: int) -> Any:
    sets = [*EXTRA, *CONFIGS[config].items(), ("rollout.seed", seed), ("curriculum.stages", 2),
            ("train.steps_per_stage", steps), ("curriculum.eval_every", 10**6)]
    return api.make_config(name=f"{config}-r{seed}", out_dir=str(work / suite), data={"suite": suite},
                           sets=sets)


def stage0(work: Path, suite: str, config: str, seed: int, steps: int) -> dict[str, Any]:
    """One stage-0 draw (resumed when done): parts, work and picks."""
    load = os.getloadavg()[0]
    run = api.open_run(draw_config(work, suite, config, seed, steps))
    api.sample_rollouts(run)
    api.score_stage(run, 0)
    sel = api.select_prompts(run, 0)
    return {"config": config, "seed": seed, "run": str(run.dir.root), "load_1min": load,
            "sets": [f"{k}={v}" for k, v in EXTRA], "machine": machine_kind(),
            **parts(run, 0), "picks": sel.ids, "scores": compact_scores(run.dir.root, 0)}


def parts(run: Any, stage: int) -> dict[str, Any]:
    """Seconds and work of a stage's selection by part, from the run's metrics and state."""
    events = list(read_jsonl(run.dir.root / "metrics.jsonl"))
    out: dict[str, Any] = {"seconds": {}, "work": {}}
    if stage == 0:
        rolls = [e for e in events if e.get("event") == "rollouts"]
        if len(rolls) != 1:  # a draw killed mid-rollout logged only what its resumed process sampled
            raise SystemExit(f"{run.dir.root}: {len(rolls)} rollouts events; delete the draw's folder "
                             "and rerun, so that its whole cost is measured in one go")
        roll = rolls[0]
        pool = roll["seconds_by_set"].get("pool", 0.0)
        out["seconds"]["pool_rollouts"] = pool
        out["seconds"]["target_rollouts"] = sum(v for k, v in roll["seconds_by_set"].items() if k != "pool")
        out["work"]["pool_rollouts"] = roll["work"]["pool"]
        out["work"]["target_rollouts"] = _sum_work([w for k, w in roll["work"].items() if k != "pool"])
    else:
        drift = [e for e in events if e.get("event") == "drift" and e.get("stage") == stage]
        if drift:
            out["seconds"]["drift"] = drift[-1]["seconds"]
            out["work"]["drift"] = drift[-1]["work"]
    score = [e for e in events if e.get("event") == "score" and e.get("stage") == stage][-1]
    out["seconds"]["gradients"] = score["grad_s"]
    out["seconds"]["projection"] = score["project_s"] + score["store_s"]
    out["work"]["gradients"] = score["work"]
    out["seconds"]["selection"] = run.dir.state(stage)["selected"].get("seconds", 0.0)
    out["seconds"]["total"] = sum(out["seconds"].values())
    out["work"]["total"] = _sum_work(list(out["work"].values()))
    return out


def _sum_work(items: list[dict[str, int]]) -> dict[str, int]:
    keys = sorted({k for w in items for k in w})
    return {k: int(sum(w.get(k, 0) for w in items)) for k in keys}


def stage1(work: Path, suite: str, config: str, seed: int, steps: int, shortlist: float | None) -> dict[str, Any]:
    """Stage 1 of a finished stage-0 draw: GRPO on its picks (once), then stage 1 scored and selected
    in the draw's own run (whole pool) or, with ``shortlist``, in a sibling run that shares its
    rollouts, stage-0 scores and checkpoint."""
    from cropi.curriculum.loop import phase_train

    base = api.open_run(draw_config(work, suite, config, seed, steps))
    # the training is a means to stage 1's checkpoint: no test sets, so no evaluation at its end
    phase_train(dataclasses.replace(base, sets=dataclasses.replace(base.data, tests={})), 0,
                api.select_prompts(base, 0).ids)
    run = base
    if shortlist is not None:
        cfg = api.make_config(draw_config(work, suite, config, seed, steps), name=f"{config}-r{seed}-sl{shortlist:g}",
                              sets={"score.shortlist": shortlist})
        run = api.open_run(cfg, rollouts_root=base.dir.rollouts_root)
        _link_stage0(base.dir.stage(0), run.dir.stage(0))
    load = os.getloadavg()[0]
    api.score_stage(run, 1)
    sel = api.select_prompts(run, 1)
    return {"config": config, "seed": seed, "shortlist": shortlist, "run": str(run.dir.root), "load_1min": load,
            **parts(run, 1), "picks": sel.ids, "scores": compact_scores(run.dir.root, 1)}


def what_if(work: Path, suite: str, name: str, draw: dict[str, Any], steps: int) -> dict[str, Any]:
    """Today's seed-0 draw's responses cut by :data:`WHAT_IF` ``name``, scored and selected in a
    run with the draw's config (the cut copy is its rollouts folder; the draw's own run is only
    read, never opened, so a benchmark still writing it is not disturbed)."""
    from cropi.bench.subsample import cut_rollouts

    setting = WHAT_IF[name]
    cfg = api.make_config(draw_config(work, suite, "today", 0, steps), name=f"whatif-{name}-r0")
    root = Path(cfg.out_dir) / cfg.name
    if not (root / "cut_counts.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        counts = cut_rollouts(Path(draw["run"]) / "rollouts", root / "rollouts", int(setting["k_pool"]),
                              setting["k_first"], int(setting["k_target"]))
        atomic_write_json(root / "cut_counts.json", counts)
    counts = read_json(root / "cut_counts.json")
    run = api.open_run(cfg)
    api.sample_rollouts(run)  # the cut sets are complete: nothing is sampled
    api.score_stage(run, 0)
    sel = api.select_prompts(run, 0)
    score = [e for e in read_jsonl(run.dir.root / "metrics.jsonl") if e.get("event") == "score"][-1]
    return {"setting": setting, "run": str(run.dir.root), "counts": counts, "picks": sel.ids,
            "work_gradients": score["work"], "seconds_gradients": score["grad_s"],
            "target_cosine": _target_cosines(Path(draw["run"]), run)}


def _target_cosines(full: Path, cut: Any) -> dict[str, float]:
    """Per target set: cosine of the cut run's stage-0 target mean (projected) with the full draw's."""
    from cropi.influence.features import FeatureStore
    from cropi.influence.scores import store_target_mean

    out = {}
    for folder in sorted((full / "stages" / "stage_000" / "features" / "targets").iterdir()):
        a, b = (store_target_mean(FeatureStore.load(f), cut.cfg.score.target_max, cut.cfg.score.seed)[0]
                for f in (folder, cut.dir.stage(0) / "features" / "targets" / folder.name))
        out[folder.name] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return out


def summarize_what_if(suite: str, cells: dict[str, Any]) -> dict[str, Any]:
    """Per what-if cell: responses and tokens kept per part, prompts with a gradient, the picks'
    overlap with the full draw's (same responses) and enrichment."""
    today0 = cells["today-r0"]
    ids = pool_ids(today0)
    n = len(today0["picks"])
    full_pos = positions(ids, today0["picks"])
    out = {}
    for name, cell in cells.get("what_if", {}).items():
        m = pick_metrics(suite, {"N": cell}, 0)["per_draw"]["N"]
        c = cell["counts"]
        pool = c.get("pool", {})
        tgt = [v for k, v in c.items() if k.startswith("targets/")]
        out[name] = {
            "pool_tokens_kept": pool.get("tokens", 0) / max(pool.get("tokens_full", 1), 1),
            "target_tokens_kept": sum(v["tokens"] for v in tgt) / max(sum(v["tokens_full"] for v in tgt), 1),
            "tokens_backward": cell["work_gradients"].get("tokens_backward", 0),
            "n_grad": m["n_grad"], "enrichment": m["enrichment"], "enrichment_ci": m["enrichment_ci"],
            "overlap_vs_full": overlap(full_pos, positions(ids, cell["picks"]), n),
            "target_cosine": cell["target_cosine"]}
    return out


def _link_stage0(src: Path, dest: Path) -> None:
    """Stage 0's state, scores, selection and checkpoint of ``src`` in ``dest`` (hard links)."""
    if (dest / "state.json").exists():
        return
    tmp = dest.with_name(dest.name + ".linking")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=os.link, ignore=shutil.ignore_patterns("features"))
    tmp.rename(dest)


# ------------------------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", action="append", help="built-in suite (repeatable) [rg-lcm-seq, default-small]")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="configurations to run, comma-separated")
    ap.add_argument("--stage1", action="store_true", help="also price a stage-1 selection (trains stage 0)")
    ap.add_argument("--steps", type=int, default=10,
                    help="GRPO steps of stage 0 before stage 1 (the paper re-scores every 10 steps)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--work", default="runs/selection_cost", help="folder of the draws' runs")
    ap.add_argument("--report-only", action="store_true", help="summarize the finished cells only")
    ap.add_argument("--what-if", dest="what_if", default="",
                    help="run only these what-if cells on today's seed-0 draw (no draws), comma-separated "
                         f"(all: every one of {', '.join(WHAT_IF)})")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="config KEY=VALUE for every draw (e.g. a smoke run: rollout.max_new_tokens=16)")
    ap.add_argument("--draws", type=int, default=2,
                    help="draws per configuration: today's with rollout seeds 0..N-1, each other one's with "
                         "seeds 1..N-1; overlaps are means over pairs with different seeds [2]")
    ap.add_argument("--name", default=NAME, help="result file name [selection_cost]")
    ap.add_argument("--only", default="", help="run only these cells, comma-separated (e.g. new-r1,stage1-new-r1): "
                    "two processes on the two cores can share a suite without running a cell twice")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    EXTRA[:] = api.parse_sets(args.sets)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    suites = args.suite or ["rg-lcm-seq", "default-small"]
    configs = [c for c in args.configs.split(",") if c]
    only = {c for c in args.only.split(",") if c}
    work = Path(args.work)
    stored = load_result(args.name) or {}
    cells: dict[str, dict[str, Any]] = stored.get("cells", {})
    summaries: dict[str, Any] = stored.get("summary", {})
    details: dict[str, Any] = stored.get("details", {})

    def save() -> None:
        """Write this process's cells merged into the stored file (under its lock): processes on
        other suites, or the what-if cells of the same suite, share the file."""
        with locked(lock_path(args.name), what=f"the result file {args.name}"):
            cur = load_result(args.name) or {}
            for suite, got in cells.items():
                merged = dict(cur.get("cells", {}).get(suite, {}))
                what = {**merged.get("what_if", {}), **got.get("what_if", {})}
                merged.update(got)
                if what:
                    merged["what_if"] = what
                got.clear()
                got.update(merged)
            all_cells = {**cur.get("cells", {}), **cells}
            write_result(args.name, {"args": {**vars(args), "suite": suites}, "threads": args.threads,
                                     "configs": CONFIGS, "shortlist": SHORTLIST,
                                     "summary": {**cur.get("summary", {}), **summaries},
                                     "details": {**cur.get("details", {}), **details}, "cells": all_cells,
                                     "notes": cur.get("notes", {})})

    others = [c for c in configs if c != "today"]
    plan = [("today", 0)] + [(c, i) for i in range(1, args.draws) for c in ("today", *others)]
    for suite in suites:
        got = cells.setdefault(suite, {})
        for config, seed in plan if not (args.report_only or args.what_if) else []:
            key = f"{config}-r{seed}"
            if key not in got and (not only or key in only):
                t0 = time.perf_counter()
                got[key] = stage0(work, suite, config, seed, args.steps)
                got[key]["wall_s"] = time.perf_counter() - t0
                save()
        if args.stage1 and not (args.report_only or args.what_if):
            for key, config, seed, short in (("stage1-today-r0", "today", 0, None),
                                             (f"stage1-{RECOMMENDED}-r1", RECOMMENDED, 1, None),
                                             (f"stage1-{RECOMMENDED}-r1-shortlist", RECOMMENDED, 1, SHORTLIST)):
                if key not in got and f"{config}-r{seed}" in got and (not only or key in only):
                    got[key] = stage1(work, suite, config, seed, args.steps, short)
                    save()
        names = list(WHAT_IF) if args.what_if == "all" else [w for w in args.what_if.split(",") if w]
        for name in names if "today-r0" in got and not args.report_only else []:
            if name not in got.setdefault("what_if", {}):
                got["what_if"][name] = what_if(work, suite, name, got["today-r0"], args.steps)
                save()
        if got.get("what_if") and "today-r0" in got:
            details.setdefault(suite, {})["what_if"] = summarize_what_if(suite, got)
            save()
        result = summarize(suite, got, CONFIGS, RECOMMENDED)
        if result is not None:
            summaries[suite] = result.pop("summary")
            details[suite] = {**details.get(suite, {}), **result}
            save()
    _print(summaries, details, cells)


def _print(summaries: dict[str, Any], details: dict[str, Any], cells: dict[str, Any]) -> None:
    rows = []
    for suite, cell in cells.items():
        for key, c in cell.items():
            if key == "what_if":
                continue
            s = c["seconds"]
            w = c["work"]["total"]
            rows.append([suite, key, f"{s['total']:.0f}", f"{s.get('pool_rollouts', 0):.0f}",
                         f"{s.get('target_rollouts', 0):.0f}", f"{s['gradients']:.0f}", f"{s['projection']:.0f}",
                         w.get("tokens_generated", 0), w.get("tokens_backward", 0), f"{c.get('load_1min', 0):.2f}"])
    print_table(["suite", "draw", "total s", "pool roll s", "target roll s", "grad s", "proj s",
                 "tok generated", "tok backprop", "load"], rows)
    for suite, d in details.items():
        if d.get("what_if"):
            print(f"\n{suite}: what-if cells on today's seed-0 draw (its own responses, cut)")
            print_table(["cell", "pool tokens", "target tokens", "tok backprop", "n grad", "enrichment",
                         "overlap vs full", "target cosine"],
                        [[k, f"{v['pool_tokens_kept']:.2f}", f"{v['target_tokens_kept']:.2f}", v["tokens_backward"],
                          v["n_grad"], f"{v['enrichment']:.2f}", f"{v['overlap_vs_full']:.2f}",
                          " ".join(f"{c:.3f}" for c in v["target_cosine"].values())]
                         for k, v in d["what_if"].items()])
        if "noise_floor_overlap" not in d:
            continue
        print(f"\n{suite}: noise floor overlap {d['noise_floor_overlap']:.2f}, today's enrichment "
              f"{d['enrichment_today']:.2f} {_ci(d['enrichment_today_ci'])}")
        print_table(["config", "speed-up (s)", "speed-up (generated)", "speed-up (backprop)", "enrichment",
                     "picks on target", "on target among grad", "overlap vs today"],
                    [[c, f"{v['speedup_seconds']:.2f}x", _x(v["speedup_work_generated"]),
                      _x(v["speedup_work_backward"]), f"{v['enrichment']:.2f} {_ci(v['enrichment_ci'])}",
                      f"{v.get('target_share_picks', math.nan):.2f}", f"{v.get('target_share_grad', math.nan):.2f}",
                      f"{v['overlap_vs_today']:.2f}"] for c, v in d["configs"].items()])
        if "stage1" in d:
            print(f"stage 1: {d['stage1']}")
    print("\nsummary:", summaries)


def _ci(ci: list[float]) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _x(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2f}x"


if __name__ == "__main__":
    main()
