"""The headline benchmark: `cropi compare` on a built-in suite, CROPI vs full-data GRPO and baselines.

Runs every arm x seed with the same step budget and evaluation schedule on shared beta rollouts,
then prints the acceleration table (docs/concepts.md#step-level-acceleration) and writes it to
benchmarks/results/acceleration.json; the full report goes to RUN/report/. Resumable: the comparison
directory keeps every finished phase, so stop it any time and run the same command again.

The run reported in docs/acceleration.md (2 CPU cores, one process per seed in parallel, one
torch thread each; about 2 h):

    for s in 0 1; do
      OMP_NUM_THREADS=1 python benchmarks/acceleration.py --name accel --suite default-small \
        --arms cropi,full,random,learnability --seeds $s --stages 2 --steps-per-stage 20 \
        --eval-every 5 --set rollout.k_pool=8 --set rollout.k_target=16 \
        --set rollout.max_new_tokens=48 --set train.prompts_per_step=2 \
        --set train.samples_per_prompt=8 --set eval.max_items=50 --set eval.samples=0 \
        --set eval.max_new_tokens=48 --set gradient.autocast_bf16=true \
        > benchmarks/results/accel_seed$s.log 2>&1 &
    done

Seeds may run in separate processes on the same comparison directory (they share the rollouts and
stage 0's features); run `cropi report runs/accel` when both are done.
"""

from __future__ import annotations

import argparse
import time

from _common import print_table, write_result
from cropi.cli.common import build_config, setup_env
from cropi.curriculum.compare import run_compare
from cropi.report import build_report
from cropi.report.runs import load_comparison
from cropi.report.summary import ACCEL_HEADERS, acceleration_rows, summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default="cropi,full,random,learnability")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--suite", default="default")
    ap.add_argument("--stages", type=int, default=5)
    ap.add_argument("--steps-per-stage", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--name", default="acceleration")
    ap.add_argument("--out-dir", default="runs")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="extra config overrides, e.g. --set rollout.k_pool=8")
    args = ap.parse_args()
    setup_env()
    cfg = build_config(None, args.sets, name=args.name, out_dir=args.out_dir, data__suite=args.suite,
                       curriculum__stages=args.stages, train__steps_per_stage=args.steps_per_stage,
                       curriculum__eval_every=args.eval_every)
    t0 = time.perf_counter()
    root = run_compare(cfg, args.arms.split(","), [int(s) for s in args.seeds.split(",")])
    seconds = time.perf_counter() - t0
    folder = build_report(root)
    rows = acceleration_rows(summarize(load_comparison(root)))
    print_table(list(ACCEL_HEADERS), rows)
    path = write_result("acceleration", {
        "args": vars(args), "seconds_this_invocation": seconds, "headers": list(ACCEL_HEADERS),
        "rows": rows, "report": str(folder / "report.md")})
    print(f"report {folder / 'report.md'}; wrote {path}")


if __name__ == "__main__":
    main()
