"""Timing helpers the benchmarks share: a CPU's matrix-product rate and the split of a GRPO step."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
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
