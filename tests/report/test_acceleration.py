"""Step-level acceleration on synthetic curves with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from cropi.report import acceleration, first_reach, mean_curve, smooth
from cropi.report.acceleration import stack_curves

STEPS = np.arange(0, 101, 10)


def linear(reach_step: float, top: float = 0.7, steps: np.ndarray = STEPS) -> np.ndarray:
    """0 at step 0, rising linearly to ``top`` at ``reach_step``, flat afterwards."""
    return top * np.minimum(steps / reach_step, 1.0)


def test_smooth_ema_by_hand() -> None:
    out = smooth([0, 10, 20, 30], [0.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(out, [0.0, 0.5, 0.75, 0.375])
    out = smooth([0, 10, 20], [0.0, 1.0, 1.0], alpha=0.25)
    np.testing.assert_allclose(out, [0.0, 0.25, 0.4375])


def test_smooth_window_none_and_order() -> None:
    np.testing.assert_allclose(smooth([0, 1, 2, 3], [1.0, 2.0, 3.0, 6.0], method="window",
                                      window=2), [1.0, 1.5, 2.5, 4.5])
    np.testing.assert_allclose(smooth([0, 1, 2], [0.3, 0.1, 0.2], method="none"), [0.3, 0.1, 0.2])
    # points given out of step order: smoothed in step order, returned aligned with the input
    np.testing.assert_allclose(smooth([20, 0, 10], [1.0, 0.0, 1.0]), [0.75, 0.0, 0.5])


@pytest.mark.parametrize("kwargs", [{"method": "median"}, {"alpha": 0.0}, {"alpha": 1.5},
                                    {"method": "window", "window": 0}])
def test_smooth_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        smooth([0, 1], [0.0, 1.0], **kwargs)


def test_smooth_rejects_duplicate_steps_and_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        smooth([0, 10, 10], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        smooth([0, 10], [0.1])


def test_first_reach() -> None:
    assert first_reach([0, 10, 20, 30], [0.1, 0.5, 0.5, 0.9], 0.5) == 10  # tie: >=, earliest
    assert first_reach([30, 0, 10, 20], [0.9, 0.1, 0.6, 0.5], 0.55) == 10  # step order, not input
    assert first_reach([0, 10], [0.1, 0.2], 0.3) is None
    assert first_reach([0, 10], [0.1, 0.3 - 1e-13], 0.3) == 10  # within the 1e-12 tolerance
    assert first_reach([0, 10], [0.1, 0.3 - 1e-9], 0.3) is None


def test_exact_ratio_linear_curves() -> None:
    res = acceleration(STEPS, linear(100), STEPS, linear(40), method="none")
    assert res["a_star"] == pytest.approx(0.7)
    assert (res["s_base"], res["s_arm"]) == (100, 40)
    assert res["ratio"] == pytest.approx(2.5)
    assert res["reached"] is True and res["gap"] is None
    assert res["label"] == "2.50x"


def test_exact_ratio_with_ema_by_hand() -> None:
    # baseline EMA: 0, .25, .625 -> a* = .625 at step 20; arm EMA on steps 0,5,10: 0, .5, .75
    res = acceleration([0, 10, 20], [0.0, 0.5, 1.0], [0, 5, 10], [0.0, 1.0, 1.0])
    assert res["a_star"] == pytest.approx(0.625)
    assert (res["s_base"], res["s_arm"], res["label"]) == (20, 10, "2.00x")


def test_never_reaches_reports_gap_not_a_number() -> None:
    arm = np.minimum(linear(40), 0.669)
    res = acceleration(STEPS, linear(100), STEPS, arm, method="none")
    assert res["reached"] is False and res["ratio"] is None and res["s_arm"] is None
    assert res["gap"] == pytest.approx(0.031)
    assert res["label"] == "< 1 (gap 0.031)"


def test_smoothing_removes_a_single_spike() -> None:
    arm = np.full(STEPS.shape, 0.3)
    arm[2] = 0.9  # one lucky evaluation at step 20
    raw = acceleration(STEPS, linear(100), STEPS, arm, method="none")
    assert raw["s_arm"] == 20 and raw["label"] == "5.00x"
    ema = acceleration(STEPS, linear(100), STEPS, arm)  # spike smoothed to 0.6 < a* ~ 0.63
    assert ema["reached"] is False and ema["label"].startswith("< 1 (gap ")


def test_noisy_curves_with_smoothing() -> None:
    rng = np.random.default_rng(0)
    steps = np.arange(0, 501, 5)
    base = linear(500, steps=steps) + rng.normal(0, 0.01, steps.size)
    arm = linear(200, steps=steps) + rng.normal(0, 0.01, steps.size)
    res = acceleration(steps, base, steps, arm, method="window", window=5)
    assert res["reached"] and 2.0 < res["ratio"] < 3.0
    same = acceleration(steps, base, steps, base, method="window", window=5)
    assert same["label"] == "1.00x"


def test_baseline_final_is_not_its_max() -> None:
    base = np.array([0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.8, 0.75, 0.7, 0.7, 0.7])
    res = acceleration(STEPS, base, STEPS, linear(20), method="none")
    assert res["a_star"] == pytest.approx(0.7) and res["s_base"] == 40  # first reached going up
    assert res["s_arm"] == 20 and res["label"] == "2.00x"
    rising = acceleration(STEPS, linear(100), STEPS, linear(20), method="none")
    assert rising["s_base"] == 100 and rising["label"] == "5.00x"  # final is the max


def test_ties() -> None:
    # the arm equals a* exactly (and up to float rounding) from step 50 on
    base = np.array([0.0, 0.1, 0.3])
    arm = np.array([0.0, 0.1 + 0.2, 0.3])  # 0.30000000000000004 vs 0.3
    res = acceleration([0, 50, 100], base, [0, 50, 100], arm, method="none")
    assert (res["s_arm"], res["label"]) == (50, "2.00x")
    res = acceleration([0, 50, 100], [0.0, 0.1, 0.1 + 0.2], [0, 50, 100], [0.0, 0.3, 0.3],
                       method="none")
    assert res["reached"] and res["s_arm"] == 50


def test_step_zero() -> None:
    res = acceleration(STEPS, linear(100), STEPS, np.full(STEPS.shape, 0.8), method="none")
    assert res["s_arm"] == 0 and res["ratio"] is None and res["reached"] is True
    assert res["label"] == "reached at step 0" and res["gap"] is None
    # a baseline that never improves on step 0: a* reached at step 0 by it, later by the arm
    res = acceleration([0, 10], [0.5, 0.4], [0, 10], [0.3, 0.6], method="none")
    assert res["s_base"] == 0 and res["s_arm"] == 10 and res["ratio"] == 0.0


def test_empty_curves_are_rejected() -> None:
    with pytest.raises(ValueError):
        acceleration([], [], [0], [0.1])


def test_mean_curve_common_steps() -> None:
    steps, mean = mean_curve([([0, 10, 20, 30], [0.1, 0.2, 0.3, 0.4]),
                              ([20, 0, 10], [0.5, 0.3, 0.4])])
    np.testing.assert_array_equal(steps, [0, 10, 20])
    np.testing.assert_allclose(mean, [0.2, 0.3, 0.4])
    steps, values = stack_curves([([0, 10], [0.1, 0.2]), ([0, 10], [0.3, 0.4])])
    assert values.shape == (2, 2)
    with pytest.raises(ValueError, match="common"):
        mean_curve([([0], [0.1]), ([10], [0.2])])
    with pytest.raises(ValueError):
        mean_curve([])


def test_acceleration_on_seed_means() -> None:
    seeds = [(STEPS, linear(40) + d) for d in (-0.01, 0.01)]
    steps, mean = mean_curve(seeds)
    res = acceleration(STEPS, linear(100), steps, mean, method="none")
    assert res["s_arm"] == 40 and res["label"] == "2.50x"
