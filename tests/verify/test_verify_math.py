"""The ``math`` and ``numeric`` verifiers on adversarial completions, threads and subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cropi.data.schema import PromptRecord
from cropi.utils.errors import CropiError
from cropi.verify import Verdict, verify
from cropi.verify.math_verifier import expand_e_notation, nesting_depth, too_complex


def record(answer: str, verifier: str, **meta: Any) -> PromptRecord:
    return PromptRecord(id="r1", prompt=[{"role": "user", "content": "q?"}], answer=answer,
                        source="test", meta={"verifier": verifier, **meta})


def assert_binary(verdict: Verdict) -> None:
    assert type(verdict.reward) is float and verdict.reward in (0.0, 1.0)


# (gold, completion, expected reward) for both verifiers
SHARED = [
    ("42", "The answer is 42.", 1.0),
    ("42", "17 + 25 = 42", 1.0),
    ("42", "$\\boxed{42}$", 1.0),
    ("0.5", "\\boxed{\\frac{1}{2}}", 1.0),
    ("\\frac{1}{2}", "so it is 0.5", 1.0),
    ("42", "<answer>42</answer>", 1.0),
    ("42", "reasoning... <answer> 42 </answer>", 1.0),
    ("2842", "2,842", 1.0),
    ("2,842", "2842", 1.0),
    ("3", "\\boxed{3.0}", 1.0),
    ("43", "I think 41 or 43", 1.0),
    ("41", "I think 41 or 43", 0.0),
    ("5", "50", 0.0),
    ("50", "5", 0.0),
    ("5", " 5 ", 1.0),
    ("126", "1.26e+02", 1.0),
    ("-7", "-7", 1.0),
    ("-7", "so x = -7.", 1.0),
    ("7", "-7", 0.0),
    ("-5", "The answer is \u22125", 1.0),
    ("5", "The answer is \u22125", 0.0),
    ("5", "５", 1.0),
    ("5", "答案是 5", 1.0),
    ("3/4", "<answer>0.75</answer>", 1.0),
    ("42", "", 0.0),
    ("42", "   \n ", 0.0),
    ("42", "None", 0.0),
    ("42", "null", 0.0),
    ("42", "\\boxed{", 0.0),
    ("42", "<answer></answer>", 0.0),
    ("42", "🤔 no idea", 0.0),
]
MATH_ONLY = [
    ("x=13", "13", 1.0),
    ("13", "x = 13", 1.0),
    ("\\frac{\\sqrt{3}}{2}", "$\\boxed{\\frac{\\sqrt{3}}{2}}$", 1.0),
    ("\\sqrt{2}", "$\\boxed{2^{1/2}}$", 1.0),
    ("10", "$\\boxed{\\binom{5}{2}}$", 1.0),
    ("3", "\\boxed{3.0001}", 0.0),
    # gold answers math-verify misreads when parsed without $...$
    ("[0, 1)", "$\\boxed{[0, 1)}$", 1.0),
    ("[0, 1)", "1", 0.0),
    ("\\{2, 1\\}", "$\\boxed{\\{1, 2\\}}$", 1.0),
    ("\\{2, 1\\}", "1", 0.0),
    ("y = 2x + 3", "3", 0.0),
]
NUMERIC_ONLY = [
    ("1000000", "1000000.5", 1.0),  # relative tolerance 1e-6
    ("1000", "1000.01", 0.0),
    ("0", "0.0000001", 0.0),
    ("0.5", "\\boxed{\\dfrac{1}{2}}", 1.0),
]


@pytest.mark.parametrize(("gold", "completion", "expected"), SHARED + MATH_ONLY)
def test_math_verifier(gold: str, completion: str, expected: float) -> None:
    verdict = verify(completion, record(gold, "math"))
    assert_binary(verdict)
    assert verdict.reward == expected, verdict


@pytest.mark.parametrize(("gold", "completion", "expected"), SHARED + NUMERIC_ONLY)
def test_numeric_verifier(gold: str, completion: str, expected: float) -> None:
    verdict = verify(completion, record(gold, "numeric"))
    assert_binary(verdict)
    assert verdict.reward == expected, verdict


def test_numeric_verifier_rejects_non_numeric_gold() -> None:
    with pytest.raises(CropiError, match="not a number"):
        verify("42", record("Paris", "numeric"))


PATHOLOGICAL = {
    "100 kB digits": "7" * 100_000,
    "100 kB digits, gold suffix": "7" * 100_000 + " so the answer is 42",
    "10k nested braces": "$" + "{" * 10_000 + "42" + "}" * 10_000 + "$",
    "20 nested braces": "$" + "{" * 20 + "42" + "}" * 20 + "$",
    "20 nested parens": "$" + "(" * 20 + "42" + ")" * 20 + "$",
    "unterminated box": "the answer is \\boxed{42",
    "power tower": "\\boxed{9^{9^{9^{9}}}}",
    "python power tower": "2**2**2**2**2",
    "huge exponent": "\\boxed{10^{100000000}}",
    "huge factorial": "\\boxed{(10^{10})!}",
    "huge binomial": "\\boxed{\\binom{10^{50}}{10^{20}}}",
    "many boxes": "\\boxed{1}" * 5000,
    "many dollars": "$" * 10_000,
    "lone surrogate": "\ud800 42",
    "control chars": "\x00\x01\x1b[31m42\x07",
}


@pytest.mark.parametrize("verifier", ["math", "numeric"])
@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_completions_are_bounded(verifier: str, name: str) -> None:
    start = time.perf_counter()
    verdict = verify(PATHOLOGICAL[name], record("42", verifier))
    elapsed = time.perf_counter() - start
    assert_binary(verdict)
    assert "timed out" not in verdict.reason  # screened, not rescued by the deadline
    assert elapsed < 2.0, f"{name}: {elapsed:.2f} s"


def test_screening_rules() -> None:
    assert nesting_depth("\\frac{\\sqrt{3}}{2}") == 2
    assert nesting_depth("\\{\\{\\{") == 0
    assert too_complex("\\frac{\\sqrt{3}}{2} + (x^2)^3 + e^{i\\pi} + 2^{10}") is None
    assert too_complex("9^{9^{9}}") == "power tower"
    assert too_complex("10^{12345}") == "exponent with 4+ digits"
    assert expand_e_notation("1.26e+02 and 5e-3 and x2e5") == "126 and 0.005 and x2e5"


def test_math_verifier_from_worker_threads() -> None:
    table = SHARED + MATH_ONLY
    with ThreadPoolExecutor(max_workers=8) as pool:
        rewards = list(pool.map(lambda row: verify(row[1], record(row[0], "math")).reward, table))
    assert rewards == [row[2] for row in table]


_SUBPROCESS = """
import json, sys
import cropi.verify as v
from cropi.data.schema import PromptRecord
out = {"after_import": sorted(m for m in ("torch", "math_verify", "reasoning_gym", "transformers")
                              if m in sys.modules)}
def rec(answer, verifier):
    return PromptRecord(id="a", prompt=[{"role": "user", "content": "q"}], answer=answer,
                        source="t", meta={"verifier": verifier})
out["math"] = v.verify("\\\\boxed{\\\\frac{1}{2}}", rec("0.5", "math")).reward
out["numeric"] = v.verify("2,842", rec("2842", "numeric")).reward
out["torch_after_verify"] = "torch" in sys.modules
entry = {"question": "gcd of 10 and 15?", "answer": "5", "metadata": {}}
rg = PromptRecord(id="b", prompt=[{"role": "user", "content": "q"}], answer="5", source="gcd",
                  meta={"verifier": "reasoning_gym", "rg": {"dataset": "gcd", "entry": entry}})
out["reasoning_gym"] = v.verify("<answer>5</answer>", rg).reward
out["torch_after_rg"] = "torch" in sys.modules  # reasoning_gym 0.1.25 does not pull torch either
print(json.dumps(out))
"""


def test_subprocess_is_torch_free_and_lazy() -> None:
    proc = subprocess.run([sys.executable, "-c", _SUBPROCESS], capture_output=True, text=True,
                          timeout=120, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"after_import": [], "math": 1.0, "numeric": 1.0, "torch_after_verify": False,
                   "reasoning_gym": 1.0, "torch_after_rg": False}
