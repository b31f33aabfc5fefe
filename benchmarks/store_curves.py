"""Per arm x seed curves and costs of a benchmarks/acceleration.py run store, as markdown rows.

Reads the committed store (``benchmarks/results/acceleration_runs_NAME.json``) only: no run folder,
no model. For each finished arm x seed: the targeted accuracy at every evaluation, the untargeted
accuracy where it was measured, and the seconds of scoring, training and evaluation from the
run's own events (with the draw's rollout seconds of that seed). This is the table
docs/acceleration.md shows for each finished seed before a plan's statistics exist.

    python benchmarks/store_curves.py --name v3fp32 [--seeds 1]
"""

from __future__ import annotations

import argparse

from cropi.bench import load_result
from cropi.bench.store import run_costs, run_curves, store_name


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
            t, u = run_curves(run["events"])
            print(f"| {arm} x {seed} | {', '.join(f'{x:.3f}' for x in t)} | {', '.join(f'{x:.3f}' for x in u)} |")
            rows.append((arm, seed, run_costs(run["events"])))
    print("\n| arm x seed | scoring (s) | training (s) | evaluation (s) | GRPO steps |\n|---|---|---|---|---|")
    for arm, seed, c in rows:
        print(f"| {arm} x {seed} | {c['score_s']:.0f} | {c['train_s']:.0f} | {c['eval_s']:.0f} | {c['steps']} |")


if __name__ == "__main__":
    main()
