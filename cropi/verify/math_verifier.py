"""The ``math`` verifier: symbolic equivalence with HuggingFace math-verify (sympy).

``<answer>`` tags are stripped first (math-verify finds nothing inside them), e-notation is
written out (math-verify reads ``1.26e+02`` as 1.26), and math-verify's signal-based timeouts
are switched off (they fail off the main thread); :func:`cropi.verify.verify` bounds the time
instead. Text that would make sympy build enormous objects (deep nesting, power towers, huge
exponents) skips sympy and is compared numerically, as is text where math-verify finds nothing.
math_verify is imported on first use so ``import cropi.verify`` stays light.
"""

from __future__ import annotations

import functools
import logging
import re
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from cropi.verify.base import Verdict, register_verifier
from cropi.verify.extract import normalize_text, shown, strip_answer_tags, tail
from cropi.verify.numeric import gold_number, numeric_verdict, text_verdict

if TYPE_CHECKING:
    from cropi.data.schema import PromptRecord

log = logging.getLogger(__name__)

MAX_NESTING = 8  # bracket depth beyond which sympy's parse time explodes (2x per level)
MAX_E_EXPONENT = 100

_POW = r"(?:\^|\*\*)"
_POWER_TOWER = re.compile(
    rf"{_POW}\s*(?:\{{[^{{}}]*{_POW}|\([^()]*{_POW}|[\w.]+\s*{_POW})"
)
_BIG_EXPONENT = re.compile(rf"{_POW}\s*[{{(]?\s*-?[0-9]{{4,}}")
_BIG_FACTORIAL = re.compile(
    r"(?:[)}]|[0-9]{4,})\s*!|\\binom\s*\{[^{}]*(?:\^|[0-9]{4,})|\\choose"
)
_E_NOTATION = re.compile(r"(?<![\w.])[0-9]+(?:\.[0-9]+)?[eE][+-]?[0-9]{1,3}(?![\w.])")


@functools.lru_cache(maxsize=1)
def _math_verify() -> Any:
    import math_verify
    from math_verify import grader, parser

    # We pass timeouts of None and bound the time ourselves: silence the one-off warning.
    grader.TIMEOUT_WARNING_SHOWN = True
    parser.TIMEOUT_WARNING_SHOWN = True
    return math_verify


def nesting_depth(text: str) -> int:
    """Deepest nesting of ``{([`` brackets (a character after a backslash is skipped)."""
    depth = deepest = 0
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth = max(depth - 1, 0)
    return deepest


def too_complex(text: str) -> str | None:
    """Why ``text`` should not reach sympy, or None when it is safe."""
    if nesting_depth(text) > MAX_NESTING:
        return f"brackets nested deeper than {MAX_NESTING}"
    if _POWER_TOWER.search(text):
        return "power tower"
    if _BIG_EXPONENT.search(text):
        return "exponent with 4+ digits"
    if _BIG_FACTORIAL.search(text):
        return "factorial or binomial of an expression"
    return None


def _expand_one(m: re.Match[str]) -> str:
    try:
        value = Decimal(m.group(0))
    except InvalidOperation:
        return m.group(0)
    if abs(value.adjusted()) > MAX_E_EXPONENT:
        return m.group(0)
    return format(value.normalize(), "f")


def expand_e_notation(text: str) -> str:
    """``1.26e+02`` -> ``126``, ``5e-3`` -> ``0.005`` (exponents up to 100)."""
    return _E_NOTATION.sub(_expand_one, text)


@functools.lru_cache(maxsize=4096)
def parse_gold(gold: str) -> tuple[Any, ...]:
    """math-verify's parse of a gold answer, cached. A gold without ``$`` or ``\\boxed`` is
    parsed as ``$gold$`` first: parsed bare, ``[0, 1)`` reads as 1 and ``\\{1, 2\\}`` as 1."""
    mv = _math_verify()
    text = expand_e_notation(gold.strip())
    tries = [text] if "$" in text or "\\boxed" in text else [f"${text}$", text]
    for attempt in tries:
        parsed = mv.parse(attempt, parsing_timeout=None)
        if parsed:
            return tuple(parsed)
    return ()


def _fallback(text: str, gold: str, why: str) -> Verdict:
    value = gold_number(gold)
    verdict = numeric_verdict(text, value) if value is not None else text_verdict(text, gold)
    return Verdict(verdict.reward, verdict.extracted, f"{why}; {verdict.reason}")


def _shown_parse(parsed: list[Any]) -> str | None:
    strings = [p for p in parsed if isinstance(p, str)]
    return shown(strings[-1] if strings else str(parsed[0]))


@register_verifier("math")
def verify_math(completion: str, record: PromptRecord) -> Verdict:
    text = strip_answer_tags(normalize_text(tail(completion))).strip()
    if not text:
        return Verdict(0.0, None, "empty answer")
    why = too_complex(text)
    if why is not None:
        return _fallback(text, record.answer, f"not sent to sympy ({why})")
    mv = _math_verify()
    pred = mv.parse(expand_e_notation(text), parsing_timeout=None)
    if not pred:
        return _fallback(text, record.answer, "math-verify found no answer")
    gold = parse_gold(record.answer)
    if not gold:
        return _fallback(text, record.answer, "math-verify cannot read the gold answer")
    ok = bool(mv.verify(list(gold), pred, timeout_seconds=None))
    return Verdict.of(ok, _shown_parse(pred), "math-verify: equal" if ok else "math-verify: differ")
