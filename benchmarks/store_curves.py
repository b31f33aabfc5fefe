"""Per arm x seed curves and costs of a benchmarks/acceleration.py run store, as markdown rows.

Reads the committed store (``benchmarks/results/acceleration_runs_NAME.json``) only: no run folder,
no model. For each finished arm x seed: the targeted accuracy at every evaluation, the untargeted
accuracy where it was measured, and the seconds of scoring, training and evaluation from the
run's own events (:func:`cropi.report.runs.eval_curve` and :func:`~cropi.report.runs.time_breakdown`,
as the report reads them). This is the table
docs/acceleration.md shows for each finished seed before a plan's statistics exist.

    python benchmarks/store_curves.py --name v3fp32 [--seeds 1]
"""

from __future__ import annotations

import argparse

from cropi.bench import load_result
from cropi.bench.store import store_name
from cropi.report.runs import eval_curve, time_breakdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="the run's --name (store acceleration_runs_NAME.json)")
    ap.add_argument("--seeds", default="", help="comma-separated seeds (default: every stored seed)")
    args = ap.parse_args()
    store = load_result(store_name(args.name))
    if store is None:
        raise SystemExit(f"no store for --name {args.name}: benchmarks/results/{store_name(args.name)}.json")
    want = {s for s in args.seeds.split(",") if s}
    print("| arm x seed | targeted | untargeted |\n|---|---|---|")
    rows = []
    for arm, seeds in store["runs"].items():
        for seed, run in sorted(seeds.items(), key=lambda kv: int(kv[0])):
            if want and seed not in want:
                continue
            events = run["events"]
            t, u = eval_curve(events, "targeted")[1], eval_curve(events, "untargeted")[1]
            print(f"| {arm} x {seed} | {', '.join(f'{x:.3f}' for x in t)} | {', '.join(f'{x:.3f}' for x in u)} |")
            parts: dict[str, float] = {}
            for per in time_breakdown(events).values():
                for category, seconds in per.items():
                    parts[category] = parts.get(category, 0.0) + seconds
            steps = sum(int(e.get("steps", 0)) for e in events if e.get("event") == "train")
            rows.append((arm, seed, parts, steps))
    print("\n| arm x seed | scoring (s) | training (s) | evaluation (s) | GRPO steps |\n|---|---|---|---|---|")
    for arm, seed, c, steps in rows:
        print(f"| {arm} x {seed} | {c.get('scoring', 0):.0f} | {c.get('training', 0):.0f} | "
              f"{c.get('evaluation', 0):.0f} | {steps} |")


if __name__ == "__main__":
    main()
