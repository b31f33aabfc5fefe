"""bf16 against fp32 generation on this CPU, side by side: what ``rollout.dtype=auto`` decides.

bf16 is fast only where the CPU computes it natively (AVX512-BF16 or AMX); elsewhere (an AVX2-only
CPU, most laptops and many cloud VMs) torch emulates it and it is slower than fp32. This benchmark
times, in both dtypes, with the two interleaved (each repetition alternates which goes first):

    matmul      1024^3 matrix products (GFLOP/s)
    rollout     beta's rollouts of 8 rg-lcm-seq pool prompts x K = 8, <= 64 tokens (``rows_for_chunk``:
                sampling plus the fp32 teacher-forced log-prob pass); tokens generated per second
    eval        100 greedy test items of rg-lcm-seq, <= 64 tokens, batched by length; items per second
    grpo        2 GRPO steps of 2 prompts x 8 samples x <= 40 tokens, generation from a bf16 or an
                fp32 shadow of the policy (``StageSpeed.bf16_generation``); seconds per step

and prints what ``auto`` resolves to here (``cropi.model.loading.bf16_is_fast``). Results go to
benchmarks/results/cpu_dtype.json after every cell; a rerun skips the cells already there.

    OMP_NUM_THREADS=1 python benchmarks/cpu_dtype.py --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cropi.bench import load_result, print_table, write_result
from cropi.bench.timing import StepTimer, matmul_gflops, timed_eval, timed_rollout

NAME = "cpu_dtype"
DTYPES = ("bf16", "fp32")
HEADERS = ["task", "unit", "bf16", "fp32", "bf16 slower by"]


def rollout_cell(model, tok, records, dtype: str, rep: int) -> dict[str, Any]:
    from cropi.config import RolloutConfig
    from cropi.rollout.collect import make_policy

    cfg = RolloutConfig(dtype=dtype, k_pool=8, k_first=None, temperature=0.5, max_new_tokens=64)
    return timed_rollout(make_policy(model, tok, cfg), records, 8, cfg, 1000 + rep)


def eval_cell(model, tok, tests, dtype: str, items: int) -> dict[str, Any]:
    """The first ``items / len(tests)`` items of each test set."""
    from cropi.config import RolloutConfig
    from cropi.rollout.collect import make_policy

    per_set = items // len(tests)
    return timed_eval(make_policy(model, tok, RolloutConfig(dtype=dtype)),
                      {name: list(recs)[:per_set] for name, recs in tests.items()})


def grpo_cell(model_name: str, records, dtype: str, rep: int) -> dict[str, Any]:
    from cropi.config import TrainConfig
    from cropi.train import grpo, grpo_speed

    cfg = TrainConfig(steps_per_stage=2, prompts_per_step=2, samples_per_prompt=8, max_new_tokens=40,
                      seed=rep)
    speed = dataclasses.replace(grpo_speed.FAST, bf16_generation=dtype == "bf16")
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp, timer.patched():
        res = grpo.train_stage(model_name, Path(tmp) / "ck", records, cfg, device="cpu", speed=speed)
    steps = [float(e["step_seconds"]) for e in res.log]
    return {"step_s": steps, "generation_s": timer.t["_generate"][:len(steps)],
            "completion_mean_tokens": [float(e.get("completions/mean_length", 0.0)) for e in res.log]}


def summarize(cells: dict[str, Any]) -> list[list[Any]]:
    """One row per task: the mean over repetitions of each dtype and bf16's time over fp32's."""
    rows = []
    for task, key, unit in (("rollout", "tokens_per_s", "tok/s"), ("eval", "items_per_s", "items/s"),
                            ("grpo", "step_s", "s/step")):
        means = {}
        for d in DTYPES:
            vals = [c[key] for k, c in cells.items() if k.startswith(f"{task}/{d}/")]
            flat = [v for x in vals for v in (x if isinstance(x, list) else [x])]
            means[d] = statistics.fmean(flat) if flat else None
        if None in means.values():
            continue
        slower = means["fp32"] / means["bf16"] if unit != "s/step" else means["bf16"] / means["fp32"]
        rows.append([task, unit, round(means["bf16"], 2), round(means["fp32"], 2), round(slower, 2)])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="default")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--eval-items", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cropi.data.suites import build_suite
    from cropi.evaluation import is_targeted
    from cropi.model.loading import bf16_is_fast, load_model, load_tokenizer

    keep = vars(args)
    prev = load_result(NAME)
    cells: dict[str, Any] = prev["cells"] if prev and prev.get("args") == keep else {}
    ref = {"auto_resolves_to": "bf16" if bf16_is_fast("cpu") else "fp32",
           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "matmul_gflops": {d: matmul_gflops(t) for d, t in (("fp32", torch.float32), ("bf16", torch.bfloat16))}}
    print(f"{ref['cpu_capability']}: matmul fp32 {ref['matmul_gflops']['fp32']:.1f} GFLOP/s, bf16 "
          f"{ref['matmul_gflops']['bf16']:.1f}; rollout.dtype=auto -> {ref['auto_resolves_to']}", flush=True)
    tok = load_tokenizer(args.model)
    model = load_model(args.model, "fp32").eval()
    suite = build_suite("rg-lcm-seq", 0)
    targeted = {n: v for n, v in suite.tests.items() if is_targeted(n)}

    def save(partial: bool = True) -> None:
        write_result(NAME, {"args": keep, "partial": partial, "reference": ref, "cells": cells,
                            "headers": HEADERS, "rows": summarize(cells)})

    for rep in range(args.reps):
        order = DTYPES if rep % 2 == 0 else DTYPES[::-1]
        for task in ("rollout", "eval", "grpo"):
            for d in order:
                key = f"{task}/{d}/{rep}"
                if key in cells:
                    continue
                t = time.perf_counter()
                if task == "rollout":
                    cells[key] = rollout_cell(model, tok, suite.pool[:8], d, rep)
                elif task == "eval":
                    cells[key] = eval_cell(model, tok, targeted, d, args.eval_items)
                else:
                    cells[key] = grpo_cell(args.model, suite.pool[:8], d, rep)
                print(f"{key}: {time.perf_counter() - t:.1f} s", flush=True)
                save()
    save(partial=False)
    print_table(HEADERS, summarize(cells))


if __name__ == "__main__":
    main()
