"""Verdict, the registry, the never-raising dispatcher and the thread-safe deadline."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cropi.data.schema import PromptRecord
from cropi.utils.errors import CropiError
from cropi.verify import (
    Verdict,
    check_record,
    get_verifier,
    list_verifiers,
    register_verifier,
    verify,
)
from cropi.verify import base
from cropi.verify.deadline import call_with_deadline


def record(answer: str, verifier: str, **meta: Any) -> PromptRecord:
    return PromptRecord(id="r1", prompt=[{"role": "user", "content": "q?"}], answer=answer,
                        source="test", meta={"verifier": verifier, **meta})


@pytest.fixture()
def scratch_registry() -> Iterator[None]:
    saved = dict(base.VERIFIERS._entries)
    yield
    base.VERIFIERS._entries = saved


def test_verdict_reward_is_exactly_binary() -> None:
    assert Verdict(1, "x", "ok").reward == 1.0
    assert type(Verdict(1, "x", "ok").reward) is float
    assert Verdict.of(False, None, "no").reward == 0.0
    for bad in (0.5, -1.0, 2.0, True, float("nan")):
        with pytest.raises(ValueError):
            Verdict(bad, None, "bad")


def test_builtin_verifiers_are_registered() -> None:
    assert {"math", "numeric", "reasoning_gym"} <= set(list_verifiers())
    assert list_verifiers() == sorted(list_verifiers())


def test_duplicate_name_is_rejected(scratch_registry: None) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("math")(lambda c, r: Verdict(0.0, None, ""))


def test_unknown_verifier_names_the_known_ones() -> None:
    with pytest.raises(CropiError, match="unknown verifier 'nope'") as err:
        get_verifier("nope")
    assert "math" in str(err.value) and "numeric" in str(err.value)
    with pytest.raises(CropiError, match="unknown verifier"):
        verify("42", record("42", "nope"))


def test_dispatch_uses_record_verifier(scratch_registry: None) -> None:
    register_verifier("always_one")(lambda c, r: Verdict(1.0, c, "yes"))
    assert verify("anything", record("0", "always_one")) == Verdict(1.0, "anything", "yes")


def _raise(completion: str, rec: PromptRecord) -> Verdict:
    raise RecursionError("deep")


def test_verifier_errors_become_reward_zero(scratch_registry: None) -> None:
    register_verifier("boom")(_raise)
    register_verifier("not_a_verdict")(lambda c, r: 1.0)
    assert verify("42", record("42", "boom")) == Verdict(0.0, None, "verifier error: RecursionError")
    assert verify("42", record("42", "not_a_verdict")).reward == 0.0


@pytest.mark.parametrize("completion", [None, 42, b"42", ["42"]])
def test_non_text_completion_scores_zero(completion: Any) -> None:
    verdict = verify(completion, record("42", "math"))  # type: ignore[arg-type]
    assert verdict.reward == 0.0 and "not text" in verdict.reason


def _spin(completion: str, rec: PromptRecord) -> Verdict:
    while True:
        pass


def test_hanging_verifier_times_out(scratch_registry: None) -> None:
    register_verifier("spin")(_spin)
    start = time.perf_counter()
    verdict = verify("42", record("42", "spin"), timeout_s=0.2)
    assert verdict.reward == 0.0 and "timed out" in verdict.reason
    assert time.perf_counter() - start < 2.0


def test_hanging_verifier_times_out_in_worker_threads(scratch_registry: None) -> None:
    register_verifier("spin")(_spin)
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda _: verify("1", record("1", "spin"), timeout_s=0.2), range(8)))
    assert all(v.reward == 0.0 and "timed out" in v.reason for v in verdicts)


def _busy(seconds: float) -> int:
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def test_deadline_never_leaks_into_later_code() -> None:
    """Calls that end right around their deadline: the exception is either turned into
    TimeoutError inside call_with_deadline or cleared; never raised later."""
    outcomes = {"ok": 0, "timeout": 0}
    for i in range(150):
        try:
            call_with_deadline(lambda: _busy(0.002 + (i % 5) * 0.0005), 0.003)
            outcomes["ok"] += 1
        except TimeoutError:
            outcomes["timeout"] += 1
        _busy(0.004)  # a late async exception would surface here and fail the test
    assert outcomes["ok"] + outcomes["timeout"] == 150


def test_deadline_passes_results_and_errors_through() -> None:
    assert call_with_deadline(lambda: 7, 1.0) == 7
    assert call_with_deadline(lambda: 7, None) == 7
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(lambda: 1 / 0, 1.0)


def test_check_record() -> None:
    check_record(record("\\frac{1}{2}", "math"))
    check_record(record("2,842", "numeric"))
    with pytest.raises(CropiError, match="not a number"):
        check_record(record("Paris", "numeric"))
