"""The GRPO step's loss pass with each prompt's completions concatenated against padded rows,
side by side on the default model.

``StageSpeed.concat_completions`` (default on) runs a prompt's K completions as ONE sequence on
the prompt's KV cache, each attending to the prompt and to itself only, where that costs fewer
FLOPs than rows padded to the longest completion (RLVR completions are uneven: many end early,
some run to the limit). The log-probs, entropies, loss and gradient are the same up to float
rounding (tests/train/test_grpo_speed.py). Everything else in the step is the same: generation
(the same seeded sampler), rewards, the optimizer.

Each repetition trains one stage of --steps steps from the default model on the default suite's
first 8 pool prompts (2 prompts x 8 samples x <= 40 tokens per step, the demo's step) with either
pass; repetitions alternate which goes first and share the seed, so both passes see the same
completions up to the float rounding of the updates. Reported per pass: median seconds per step
and of its loss forward and backward (TRL's ``_compute_loss`` and the rest of ``training_step``),
the completion tokens per step, and the speed-ups.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/grpo_concat.py --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from cropi.bench import print_table, write_result
from cropi.bench.timing import StepTimer
from cropi.config import TrainConfig
from cropi.data.suites import build_suite
from cropi.train import grpo, grpo_speed

PASSES = {"padded rows": dataclasses.replace(grpo_speed.FAST, concat_completions=False),
          "concatenated": grpo_speed.FAST}


def stage(speed: grpo_speed.StageSpeed, records: list[Any], args: argparse.Namespace, rep: int
          ) -> list[dict[str, float]]:
    """One stage's steps: total, loss forward and backward seconds, completion tokens."""
    cfg = TrainConfig(steps_per_stage=args.steps, prompts_per_step=2, samples_per_prompt=8,
                      max_new_tokens=40, seed=rep)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp, timer.patched():
        res = grpo.train_stage(args.model, Path(tmp) / "ck", records, cfg, device="cpu", speed=speed)
    t = timer.t
    return [{"step_s": float(e["step_seconds"]), "forward_s": t["_compute_loss"][i],
             "backward_s": t["training_step"][i] - t["_generate_and_score_completions"][i] - t["_compute_loss"][i],
             "completion_tokens": float(e.get("completions/mean_length", 0.0)) * 16}
            for i, e in enumerate(res.log)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=4, help="GRPO steps per stage")
    ap.add_argument("--reps", type=int, default=2, help="stages per pass")
    ap.add_argument("--out", default="grpo_concat", help="result file name")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    records = build_suite("default", 0).pool[:8]
    steps: dict[str, list[dict[str, float]]] = {name: [] for name in PASSES}
    load0 = os.getloadavg()[0]
    for rep in range(args.reps):
        for name in (list(PASSES) if rep % 2 == 0 else list(reversed(PASSES))):
            steps[name] += stage(PASSES[name], records, args, rep)
            print(f"rep {rep} {name}: {steps[name][-1]}", flush=True)
    med = {name: {k: statistics.median(s[k] for s in rows) for k in rows[0]} for name, rows in steps.items()}
    base, new = med["padded rows"], med["concatenated"]
    speedup = {k: base[k] / new[k] for k in ("step_s", "forward_s", "backward_s")}
    rows = [[name, f"{m['step_s']:.2f}", f"{m['forward_s']:.2f}", f"{m['backward_s']:.2f}",
             f"{m['completion_tokens']:.0f}"] for name, m in med.items()]
    rows.append(["speed-up", f"{speedup['step_s']:.2f}x", f"{speedup['forward_s']:.2f}x",
                 f"{speedup['backward_s']:.2f}x", ""])
    print_table(["loss pass", "s / step", "forward s", "backward s", "completion tokens / step"], rows)
    result = {"args": vars(args), "load_1min_start": load0, "load_1min_end": os.getloadavg()[0],
              "steps": steps, "median": med, "speedup": speedup}
    print(f"result {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
