"""Timing helpers the benchmarks share: a CPU's matrix-product rate, the split of a GRPO step,
and timed rollouts and greedy evaluations through the calls the pipeline makes."""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any


def matmul_gflops(dtype: Any, n: int = 1024, seconds: float = 1.0) -> float:
    """GFLOP/s of ``n``^3 matrix products in ``dtype``, repeated for about ``seconds``."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


class StepTimer:
    """Class-level timers on TRL's GRPOTrainer methods (the split of a step)."""

    NAMES = ("_generate", "_calculate_rewards", "_generate_and_score_completions", "_compute_loss",
             "training_step")

    def __init__(self) -> None:
        self.t: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def patched(self) -> Iterator[StepTimer]:
        from trl import GRPOTrainer

        saved = {n: getattr(GRPOTrainer, n) for n in self.NAMES}

        def wrap(name: str, f: Any) -> Any:
            @functools.wraps(f)
            def g(*a: Any, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return f(*a, **k)
                finally:
                    self.t.setdefault(name, []).append(time.perf_counter() - t)
            return g

        for n, f in saved.items():
            setattr(GRPOTrainer, n, wrap(n, f))
        try:
            yield self
        finally:
            for n, f in saved.items():
                setattr(GRPOTrainer, n, f)


def timed_rollout(policy: Any, records: Sequence[Any], k: int, cfg: Any, seed: int) -> dict[str, Any]:
    """Beta-style rollouts of ``records`` (``k`` each, ``cfg`` a ``RolloutConfig``) through
    ``collect``'s own chunk call: seconds, generated tokens and their rate, the mean pass rate."""
    from cropi.rollout.collect import rows_for_chunk

    t0 = time.perf_counter()
    rows, work = rows_for_chunk(policy, records, k, cfg, seed)
    sec = time.perf_counter() - t0
    return {"seconds": sec, "tokens": work.tokens_generated, "tokens_per_s": work.tokens_generated / sec,
            "sequences": len(records) * k, "mean_pass_rate": statistics.fmean(r["pass_rate"] for r in rows)}


def timed_eval(policy: Any, tests: Mapping[str, Sequence[Any]], by_length: bool = True) -> dict[str, Any]:
    """Greedy evaluation of every record of ``tests`` (set name -> records) through
    ``cropi.evaluation``'s item call (<= 64 new tokens): seconds, items and their rate, accuracy,
    and each item's verdict under ``"<set>/<id>"``."""
    from cropi.evaluation import item_results
    from cropi.rollout.sampler import SamplingParams
    from cropi.utils.progress import track

    params = SamplingParams(n=1, greedy=True, max_new_tokens=64)
    verdicts: dict[str, float] = {}
    t0 = time.perf_counter()
    for name, recs in tests.items():
        if not recs:
            continue
        with track(f"eval {name}", total=len(recs), transient=True) as bar:
            out = item_results(policy, list(recs), params, 64, 0, bar, by_length=by_length)
        verdicts.update({f"{name}/{r.id}": it.rewards[0] for r, it in zip(recs, out, strict=True)})
    sec = time.perf_counter() - t0
    return {"seconds": sec, "items": len(verdicts), "items_per_s": len(verdicts) / sec,
            "accuracy": statistics.fmean(verdicts.values()), "verdicts": verdicts}
