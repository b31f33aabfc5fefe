"""Beta's rollouts and greedy evaluation through cropi's decode loop, one code version per cell.

A cell runs ``collect`` (what ``cropi rollout`` runs) on the first ``--prompts`` pool prompts of a
suite in a fresh folder, then greedy evaluation of the first ``--eval-items`` items of each test
set, on the default model in fp32 unless ``--set rollout.dtype=...`` says otherwise, and stores
seconds, counted work (tokens generated, prefilled, forwarded), the rows each decode step ran and
the code's commit under ``cells.<label>`` of benchmarks/results/rollout_batching.json. Run it with
``PYTHONPATH`` pointing at another checkout to time that checkout's code on the same calls (the
script uses only what both have); run two cells side by side, one per core, then swap the cores:

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/rollout_batching.py --label new-c0 &
    OMP_NUM_THREADS=1 PYTHONPATH=../old taskset -c 1 python benchmarks/rollout_batching.py --label today-c1
    python benchmarks/rollout_batching.py --report --baseline today

``--report`` prints the cells and, per label prefix (``today``, ``new``), the mean tok/s and
items/s with their ratio to ``--baseline``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from typing import Any

import torch

from cropi.bench import load_result, lock_path, print_table, write_result
from cropi.bench.results import git_state, machine
from cropi.bench.timing import timed_eval
from cropi.config import RolloutConfig
from cropi.data.suites import build_suite
from cropi.model.loading import load_model, load_tokenizer
from cropi.rollout.collect import collect, make_policy
from cropi.utils.locking import locked

NAME = "rollout_batching"


def _set(cfg: RolloutConfig, pairs: list[str]) -> RolloutConfig:
    """``rollout.KEY=VALUE`` overrides that this code version knows (others are reported)."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        key, value = pair.removeprefix("rollout.").split("=", 1)
        if key not in fields:
            print(f"this code has no rollout.{key}: ignored")
            continue
        current = getattr(cfg, key)
        changes[key] = type(current)(value) if current is not None else int(value)
    return dataclasses.replace(cfg, **changes)


def run_cell(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    suite = build_suite(args.suite, 0)
    cfg = _set(RolloutConfig(dtype="fp32"), args.set)
    tok, model = load_tokenizer("default"), load_model("default", "fp32")
    rows: list[int] = []
    forward = model.forward

    def counting(*a: Any, **kw: Any) -> Any:  # rows of every one-token (decode) step
        ids = kw.get("input_ids")
        if ids is not None and ids.shape[1] == 1:
            rows.append(int(ids.shape[0]))
        return forward(*a, **kw)

    model.forward = counting
    policy = make_policy(model, tok, cfg)
    records = suite.pool[:args.prompts]
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        work = collect(records, folder, lambda: policy, cfg.k_pool, cfg, {"bench": NAME})
        sec = time.perf_counter() - t0
    steps, mean_rows = len(rows), statistics.fmean(rows) if rows else 0.0
    tests = {name: recs[:args.eval_items] for name, recs in suite.tests.items()}
    ev = timed_eval(policy, tests)
    return {"git": git_state(), "machine": machine(), "rollout": vars(cfg), "prompts": len(records),
            "seconds": round(sec, 2), "work": vars(work), "tokens_per_s": work.tokens_generated / sec,
            "decode_steps": steps, "mean_rows": mean_rows,
            "eval": {k: ev[k] for k in ("seconds", "items", "items_per_s", "accuracy")},
            "eval_verdicts": ev["verdicts"]}


def report(result: dict[str, Any], baseline: str) -> None:
    cells = result.get("cells", {})
    print_table(["cell", "commit", "load start", "tok/s", "tokens", "steps", "mean rows", "eval items/s",
                 "eval acc"],
                [[k, (c["git"]["commit"] or "?")[:8], c["machine"]["load_avg_start"][0], c["tokens_per_s"],
                  c["work"]["tokens_generated"], c["decode_steps"], c["mean_rows"], c["eval"]["items_per_s"],
                  c["eval"]["accuracy"]] for k, c in sorted(cells.items())])
    groups: dict[str, list[dict[str, Any]]] = {}
    for label, c in cells.items():
        groups.setdefault(label.split("-")[0], []).append(c)
    means = {g: (statistics.fmean(c["tokens_per_s"] for c in cs), statistics.fmean(c["eval"]["items_per_s"]
                                                                                 for c in cs))
             for g, cs in groups.items()}
    if baseline in means:
        base = means[baseline]
        print_table(["code", "cells", "tok/s", "vs " + baseline, "eval items/s", "vs " + baseline],
                    [[g, len(groups[g]), m[0], m[0] / base[0], m[1], m[1] / base[1]] for g, m in sorted(means.items())])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", help="the cell's name: CODE-REST, e.g. today-c0 (CODE groups cells in the report)")
    ap.add_argument("--suite", default="rg-lcm-seq")
    ap.add_argument("--prompts", type=int, default=128, help="pool prompts sampled (k_pool each)")
    ap.add_argument("--eval-items", type=int, default=25, help="greedy items per test set")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="rollout.KEY=VALUE")
    ap.add_argument("--report", action="store_true", help="print the stored cells, run nothing")
    ap.add_argument("--baseline", default="today", help="the label prefix the ratios divide by")
    args = ap.parse_args()
    if not args.report:
        if not args.label:
            ap.error("--label is required to run a cell")
        cell = run_cell(args)
        with locked(lock_path(NAME)):
            result = load_result(NAME) or {}
            cells = {**result.get("cells", {}), args.label: cell}
            write_result(NAME, {"cells": cells})
    report(load_result(NAME) or {}, args.baseline)


if __name__ == "__main__":
    main()
