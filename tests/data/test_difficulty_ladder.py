"""The difficulty-ladder suite: one generator per ladder at four increasing settings, with
ordinal levels d1-d4 that the selection analysis reads as numbers."""

from __future__ import annotations

from collections import Counter

import numpy as np

from cropi.data.suites import build_suite, get_suite_spec
from cropi.select.analysis import ordinal_levels


def test_levels_are_ordinal_and_settings_increase() -> None:
    spec = get_suite_spec("difficulty-ladder")
    by_dataset: dict[str, list] = {}
    for fam, count in spec.pool:
        assert count == 12
        by_dataset.setdefault(fam.dataset, []).append(fam)
    assert sorted(by_dataset) == ["chain_sum", "gcd", "lcm"]
    for dataset, fams in by_dataset.items():
        assert [f.level for f in fams] == ["d1", "d2", "d3", "d4"], dataset
        if dataset in ("gcd", "lcm"):
            tops = [f.config["max_value"] for f in fams]
            assert tops == sorted(tops) and len(set(tops)) == 4
    assert [f.level for f, _ in spec.targets["gcd"]] == ["d3"]
    assert [f.level for f, _ in spec.targets["chain"]] == ["d2"]


def test_built_pool_levels_read_as_numbers() -> None:
    suite = build_suite("difficulty-ladder", 0)
    levels = ordinal_levels([r.level for r in suite.pool])
    assert levels is not None and Counter(levels.tolist()) == {1.0: 36, 2.0: 36, 3.0: 36, 4.0: 36}
    assert np.isfinite(levels).all()
