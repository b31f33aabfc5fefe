"""Does re-sampling low-ESS prompts change the stage-1 picks?

At stage m > 0 CROPI scores the pool from beta's stored responses, re-weighted to the stage's
weights; after some GRPO steps many prompts' sequence weights are dominated by one response
(ESS/K < 0.5). ``score.resample_below_ess`` re-samples those prompts with the current policy
before scoring. This benchmark measures whether that matters, on one real curriculum:

1. beta's rollouts (pool K=8, targets as configured), stage 0 scored and selected (influence),
   GRPO for ``--steps`` steps on the stage-0 picks;
2. stage 1 scored from beta's responses with drift measured (ESS/K per prompt): picks **A**;
3. stage 1 rescored with ``resample_below_ess`` (prompts below the threshold re-sampled by the
   stage-1 model): picks **B1**; with ``--noise-floor`` again with another seed: picks **B2**.

Reported: ESS/K summary, the share re-sampled, the relevant (target-family) share and enrichment of
A, B1 (and B2) (enrichment over the prompts with a gradient in that scoring), and the overlaps
|A & B1| / N (|A & B2| / N, |B1 & B2| / N). B1 vs B2 is the noise floor of re-sampled picks
(without it, compare with the overlap of two independent stage-0 draws in docs/influence.md):
re-sampling *changes* the picks when A vs B is no closer than that, and *helps* when B's enrichment
is higher than A's beyond the noise. One run, one seed: a direction, not a population estimate.

    OMP_NUM_THREADS=1 python benchmarks/drift_resample.py --threads 1

Resumable (a cropi run under --work; every phase is skipped when done); writes
benchmarks/results/drift_resample.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cropi.bench import write_result


def picks_summary(run: Any, stage: int, info: dict[str, Any], relevant: set[str]) -> dict[str, Any]:
    from cropi.influence.scores import read_scores

    table = read_scores(run.dir.scores(stage)).to_pandas()
    grad = table[~table["zero_grad"]]
    ids = list(info["ids"])
    src = dict(zip(table["id"], table["source"], strict=True))
    share = float(np.mean([src[i] in relevant for i in ids]))
    share_grad = float(np.mean(grad["source"].isin(relevant)))
    out = {"ids": ids, "n_grad": int(len(grad)), "share": share, "share_grad": share_grad,
           "enrichment": share / share_grad if share_grad else None,
           "families": {s: int(sum(src[i] == s for i in ids)) for s in sorted({src[i] for i in ids})}}
    if "ess" in table:
        ess = table["ess"].to_numpy(dtype=float)
        ess = ess[np.isfinite(ess)]
        out["ess"] = {"mean": float(ess.mean()), "median": float(np.median(ess)),
                      "share_below_0.5": float(np.mean(ess < 0.5)), "n": int(ess.size)}
    return out


def overlap(a: list[str], b: list[str]) -> float:
    return len(set(a) & set(b)) / max(1, len(a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="default-small")
    ap.add_argument("--model", default="default", help="model folder (default: the embedded model)")
    ap.add_argument("--out", default="drift_resample", help="result name under benchmarks/results")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override (YAML value), e.g. --set data.pool=pool.jsonl")
    ap.add_argument("--steps", type=int, default=10, help="GRPO steps of stage 0")
    ap.add_argument("--threshold", type=float, default=0.5, help="score.resample_below_ess")
    ap.add_argument("--noise-floor", action="store_true",
                    help="also B2: a second re-sampled scoring with another seed (B1 vs B2 = the "
                         "noise floor of re-sampled picks; about 10 more minutes here)")
    ap.add_argument("--work", default="runs/drift_resample")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import yaml

    from cropi.api import make_config, open_run
    from cropi.curriculum.loop import phase_stage_selection, phase_train
    from cropi.curriculum.phases import phase_rollouts
    from cropi.curriculum.score_phase import phase_score
    from cropi.curriculum.select_phase import phase_select

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    base = {"data.suite": args.suite, "model.path": args.model, "curriculum.stages": 2,
            "train.steps_per_stage": args.steps, "curriculum.eval_every": 10_000, "eval.max_items": 8}
    for kv in args.sets:
        key, _, value = kv.partition("=")
        base[key] = yaml.safe_load(value)

    def run_with(**sets: Any) -> Any:
        cfg = make_config(name="drift", out_dir=str(work), sets={**base, **sets})
        return open_run(cfg, overwrite=bool(sets))

    run = run_with()
    relevant = {r.source for recs in run.data.targets.values() for r in recs}  # the targets' families
    pools = phase_rollouts(run)
    ids0 = phase_stage_selection(run, 0, pools)
    phase_train(run, 0, ids0)
    res: dict[str, Any] = {"args": vars(args), "relevant": sorted(relevant),
                           "stage0": picks_summary(run, 0, json.loads((run.dir.stage(0) / "selection.json").read_text()),
                                                   relevant)}
    views = {"A": {}, "B1": {"score.resample_below_ess": args.threshold, "rollout.seed": 0}}
    if args.noise_floor:
        views["B2"] = {"score.resample_below_ess": args.threshold, "rollout.seed": 1}
    for name, sets in views.items():
        r = run_with(**{"score.drift": True, **sets})
        phase_score(r, 1, pools)
        info = phase_select(r, 1, pools["pool"])
        res[name] = picks_summary(r, 1, info, relevant)
        events = [json.loads(line) for line in (r.dir.root / "metrics.jsonl").read_text().splitlines()]
        res[name]["resampled"] = [e for e in events if e.get("event") == "drift"][-1]["resampled"]
        print(name, {k: v for k, v in res[name].items() if k != "ids"}, flush=True)
    pairs = [("A", "B1"), ("A", "B2"), ("B1", "B2"), ("stage0", "A"), ("stage0", "B1")]
    res["overlap"] = {f"{a}_{b}": overlap(res[a]["ids"], res[b]["ids"]) for a, b in pairs
                      if a in res and b in res}
    print("overlap", res["overlap"], flush=True)
    write_result(args.out, res)


if __name__ == "__main__":
    main()
