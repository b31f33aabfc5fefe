"""The oracle policy: the budget from the target families' pool prompts, those with a gradient
first, then the other relevant ones, then the rest of the pool; seeded; refused without families."""

from __future__ import annotations

import numpy as np
import pytest

from cropi.select import SelectionContext, get_policy
from cropi.utils.errors import CropiError

# p0..p7: families and beta pass rates; the targets' family is "chain"
SOURCE = ["chain", "add", "chain", "chain", "add", "chain", "gcd", "chain"]
PASS = [0.5, 0.5, 0.0, 0.25, 1.0, 1.0, 0.75, np.nan]


def _ctx(seed: int = 0, targets: list[str] | None = ["chain"]) -> SelectionContext:  # noqa: B006
    return SelectionContext(ids=[f"p{i}" for i in range(8)], pass_rate=PASS, fused=None,
                            source=SOURCE, level=[None] * 8, seed=seed, target_sources=targets)


def test_gradient_prompts_of_the_target_families_first() -> None:
    oracle = get_policy("oracle")
    assert set(oracle.select(_ctx(), 2)) == {"p0", "p3"}  # chain with 0 < p < 1
    four = oracle.select(_ctx(), 4)
    assert set(four[:2]) == {"p0", "p3"} and set(four[2:]) <= {"p2", "p5", "p7"}
    six = oracle.select(_ctx(), 6)
    assert set(six[:5]) == {"p0", "p2", "p3", "p5", "p7"} and six[5] in {"p1", "p4", "p6"}
    assert sorted(oracle.select(_ctx(), 8)) == sorted(_ctx().ids)


def test_seeded_and_several_families() -> None:
    oracle = get_policy("oracle")
    assert oracle.select(_ctx(3), 5) == oracle.select(_ctx(3), 5)
    orders = {tuple(oracle.select(_ctx(s), 5)) for s in range(10)}
    assert len(orders) > 1  # the seed changes the order within a tier
    assert set(oracle.select(_ctx(targets=["chain", "gcd"]), 3)) == {"p0", "p3", "p6"}


def test_needs_the_target_families() -> None:
    with pytest.raises(CropiError, match="target sets' families"):
        get_policy("oracle").select(_ctx(targets=None), 2)
