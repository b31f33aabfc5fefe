"""The headline benchmark: CROPI vs full-data GRPO, random and the oracle, on paired seeds, with
interval estimates (docs/acceleration.md#statistics).

Every arm x seed runs `cropi compare` (same step budget and evaluation schedule); every seed
samples its own beta draw (rollout seed = rollout.seed + seed), shared by that seed's arms
(--shared-rollouts: one draw for every seed, round 2's layout). After each arm x seed, its
compact result (metrics + per-item verdicts + selections, tens of kB; cropi.report.compact) is
added to benchmarks/results/acceleration_runs_NAME.json (one file per benchmark name, with the
usual result header, updated under a file lock so that one process per seed can share it). That file is meant to be committed: an arm x seed with a compact
result is never run again; it is restored into the comparison directory for the report instead,
so a later session (or another machine) continues where this one stopped, and the statistics
always cover every finished seed. Stop it any time; rerun the same command.

Default arms: cropi (influence, configured scorer), cropi-paper (influence, the paper's scorer),
full (the baseline), random (same budget) and oracle (the target families' own pool prompts, an
upper bound on selection). Default seeds 0,1,2 (paired across arms); the power analysis of
`--pilot` says how many are needed.

    # the pilot: a short comparison, then the power analysis (seeds needed for a 2x acceleration
    # and for given area differences, from the measured seed and item variance)
    OMP_NUM_THREADS=1 python benchmarks/acceleration.py --pilot --name accel-pilot \
        --suite default-small --set eval.max_items=100

    # the long run, one process per seed (a seed's arms share its draw and stage 0's features)
    for s in 0 1 2; do
      OMP_NUM_THREADS=1 python benchmarks/acceleration.py --name accel2 --suite default-small \
        --seeds $s --stages 2 --steps-per-stage 20 --eval-every 5 --set eval.max_items=100 \
        > benchmarks/results/accel2_seed$s.log 2>&1 &
    done; wait
    python benchmarks/acceleration.py --name accel2 --suite default-small --report-only

The summary (the acceleration table, the statistics table and, with --pilot or --power, the power
table) is printed and written to benchmarks/results/acceleration.json (acceleration_NAME.json for
another --name, acceleration_pilot.json for a pilot). `--power --report-only` sizes a long run from
any finished comparison (e.g. a calibration) instead of a fresh pilot.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from cropi.api import make_config, parse_sets
from cropi.bench import print_table, write_result
from cropi.bench.store import RunStore, dtype_settings, store_name
from cropi.curriculum.compare import redundant_arms, run_compare, write_plan
from cropi.report import build_report
from cropi.report.compact import export_run
from cropi.report.runs import load_comparison, load_run
from cropi.report.power import power_analysis
from cropi.report.stats import comparison_panel
from cropi.report.summary import (ACCEL_HEADERS, PAIR_HEADERS, STATS_HEADERS, acceleration_rows, pairwise_rows,
                                  statistics_rows, summarize)
from cropi.utils.errors import CropiError

log = logging.getLogger("acceleration")

ARMS = "cropi,cropi-paper,full,random,oracle"
PILOT = {"arms": "cropi,full", "seeds": "0,1,2", "stages": 1, "steps_per_stage": 10, "eval_every": 5}
PILOT_DELTAS = (0.01, 0.02, 0.05)


def setup_env() -> None:
    """As the ``cropi`` command: offline hub, no tokenizer threads, warnings only, no HF progress bars."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def power_rows(power: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["arm", "target", "area difference", "items (x measured)", "sd per seed",
               "seeds needed", "seeds (80 % upper sd)"]
    rows = []
    for arm, res in power["arms"].items():
        for r in res["rows"]:
            rows.append([arm, r["what"], f"{r['delta']:.4f}", f"x{r['items_multiplier']:g}",
                         f"{r['sd']:.4f}", str(r["seeds"] or "> 1000"),
                         "—" if "seeds_conservative" not in r
                         else str(r["seeds_conservative"] or "> 1000")])
    return headers, rows


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default=None, help=f"comma-separated (default {ARMS}; pilot "
                    f"{PILOT['arms']})")
    ap.add_argument("--seeds", default=None, help="comma-separated, paired across arms (default 0,1,2)")
    ap.add_argument("--suite", default="default-small")
    ap.add_argument("--stages", type=int, default=None)
    ap.add_argument("--steps-per-stage", type=int, default=None)
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--name", default="acceleration")
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--pilot", action="store_true",
                    help="a short comparison (cropi, full; 3 seeds; 1 stage of 10 steps), then a "
                         "power analysis of the measured seed and item variance")
    ap.add_argument("--power", action="store_true",
                    help="add the power analysis to the summary of this comparison (implied by "
                         "--pilot); with --report-only it sizes a long run from finished runs")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: restore the compact results and report")
    ap.add_argument("--summary", default=None,
                    help="the summary's result name (default acceleration_NAME; acceleration_pilot "
                         "for --pilot), e.g. for a report over a subset of arms and seeds")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--shared-rollouts", action="store_true",
                    help="one beta draw for every seed (round 2's layout; needed to continue or rebuild its "
                         "comparisons); default: every seed its own draw")
    ap.add_argument("--mixed-machines", action="store_true",
                    help="add runs even though the store's were made on a CPU that differs in bf16 "
                         "support (by default refused: another generation dtype)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="extra config overrides, e.g. --set eval.max_items=100")
    return ap.parse_args()


def power_block(cmp: Any) -> dict[str, Any]:
    """The power analysis of a comparison (``--pilot`` / ``--power``), printed; its payload keys."""
    panel = comparison_panel(cmp)
    if panel is None or len(panel.seeds) < 2:
        raise SystemExit("the power analysis needs at least 2 paired seeds of every arm")
    power = power_analysis(panel, cmp.baseline, PILOT_DELTAS)
    headers, rows = power_rows(power)
    print(f"\npower analysis (paired t test, power {power['power']:g}, two-sided alpha "
          f"{power['alpha']:g}); a {power['factor']:g}x acceleration = area difference "
          f"{power['implied_area_difference']:.4f} on the pilot's baseline curve")
    print_table(headers, rows)
    return {"power": power, "power_headers": headers, "power_rows": rows}


def main() -> None:
    args = parse_args()
    defaults = PILOT if args.pilot else {"arms": ARMS, "seeds": "0,1,2", "stages": 2,
                                         "steps_per_stage": 20, "eval_every": 5}
    arms = (args.arms or defaults["arms"]).split(",")
    seeds = [int(s) for s in (args.seeds or defaults["seeds"]).split(",")]
    stages = args.stages or defaults["stages"]
    steps = args.steps_per_stage or defaults["steps_per_stage"]
    every = args.eval_every or defaults["eval_every"]
    setup_env()
    store = RunStore(store_name(args.name))
    # a rerun continues the comparison's stored config (as `cropi compare`), the flags over it
    cfg = make_config(name=args.name, out_dir=args.out_dir, resume=True,
                      sets=[("data.suite", args.suite), ("curriculum.stages", stages),
                            ("train.steps_per_stage", steps), ("curriculum.eval_every", every),
                            *parse_sets(args.sets)])
    if not (args.report_only or args.mixed_machines):
        try:
            store.check_machine(dtype_settings(cfg))
        except CropiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    root = cfg.run_dir
    for arm, twin in redundant_arms(cfg, arms).items():
        print(f"{arm} is skipped: with score.scorer={cfg.score.scorer} it would repeat {twin} exactly")
        arms.remove(arm)
    t0 = time.perf_counter()
    ran = []
    for seed in seeds:  # seeds outer: partial results cover every arm
        for arm in arms:
            if args.report_only or str(seed) in store.runs().get(arm, {}):
                continue
            run_compare(cfg, [arm], [seed], shared_rollouts=args.shared_rollouts)
            store.save_record(arm, seed, export_run(load_run(root / "arms" / arm / f"seed_{seed}", arm, seed)))
            ran.append(f"{arm}/{seed}")
    store.save_shared(root)
    done = store.restore(root, arms, seeds)
    write_plan(root, cfg, arms, seeds, args.shared_rollouts)
    seconds = time.perf_counter() - t0
    folder = build_report(root, n_boot=args.n_boot)
    cmp = load_comparison(root)
    accel = acceleration_rows(summarize(cmp))
    print_table(list(ACCEL_HEADERS), accel)
    stats_path = folder / "statistics.json"
    boot = json.loads(stats_path.read_text()) if stats_path.exists() else None
    if boot is not None:  # each seed's beta draw (its rollout seed), as the comparison planned them
        planned = cmp.meta.get("rollout_seeds") or {}
        boot["rollout_seeds"] = {str(s): planned[str(s)] for s in seeds if str(s) in planned}
    stats = statistics_rows(boot, cmp.baseline) if boot and cmp.baseline else []
    if stats:
        print()
        print_table(list(STATS_HEADERS), stats)
        print(f"resampled: {boot['resampled']}; {boot['note']}")
    pairs = pairwise_rows(boot, cmp.baseline) if boot and cmp.baseline else []
    if pairs:
        print()
        print_table(list(PAIR_HEADERS), pairs)
    payload = {"args": vars(args), "arms": arms, "seeds": seeds, "ran_this_invocation": ran,
               "compact_results": done, "seconds_this_invocation": seconds,
               "headers": list(ACCEL_HEADERS), "rows": accel, "stats_headers": list(STATS_HEADERS),
               "stats_rows": stats, "pair_headers": list(PAIR_HEADERS), "pair_rows": pairs,
               "statistics": boot, "report": str(folder / "report.md")}
    if args.pilot or args.power:
        payload.update(power_block(cmp))
    summary_name = args.summary or ("acceleration_pilot" if args.pilot else "acceleration"
                                    if args.name == "acceleration" else f"acceleration_{args.name}")
    path = write_result(summary_name, payload)
    print(f"report {folder / 'report.md'}; wrote {path}; compact results in {store.path}")


if __name__ == "__main__":
    main()
