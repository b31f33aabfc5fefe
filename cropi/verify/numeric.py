"""The ``numeric`` verifier: the completion's final number equals the gold number.

The candidate is the ``<answer>`` tag content, else a ``\\boxed{}``, else the last number in the
text. Comparison is exact on fractions with relative tolerance 1e-6; ``2,842``, ``3/4``,
``\\frac{3}{4}``, ``0.75``, ``1.26e+02`` and ``-7`` are all read.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from typing import TYPE_CHECKING

from cropi.utils.errors import CropiError
from cropi.verify.base import Verdict, register_verifier
from cropi.verify.extract import (
    answer_region,
    last_number,
    normalize_text,
    numbers_close,
    numeric_answer,
    parse_number,
    shown,
    tail,
)

if TYPE_CHECKING:
    from cropi.data.schema import PromptRecord

log = logging.getLogger(__name__)

REL_TOL = 1e-6


def gold_number(answer: str) -> Fraction | None:
    """The gold answer's value: the whole string if it is a number, else its last number."""
    value = parse_number(answer)
    return value if value is not None else parse_number(last_number(answer))


def numeric_verdict(completion: str, gold: Fraction, rel_tol: float = REL_TOL) -> Verdict:
    """Compare the completion's final number with ``gold``."""
    written, value = numeric_answer(completion)
    if value is None:
        return Verdict(0.0, shown(written), "no number found")
    ok = numbers_close(value, gold, rel_tol)
    return Verdict.of(ok, shown(written), "numbers match" if ok else "numbers differ")


def text_verdict(completion: str, gold: str) -> Verdict:
    """Exact comparison of the answer region (tag / box / whole text) with a non-numeric gold."""
    region = answer_region(normalize_text(tail(completion))).strip()
    ok = bool(region) and region == gold.strip()
    return Verdict.of(ok, shown(region), "exact text match" if ok else "text differs")


@register_verifier("numeric")
def verify_numeric(completion: str, record: PromptRecord) -> Verdict:
    gold = gold_number(record.answer)
    if gold is None:
        raise CropiError(
            f"gold answer {record.answer[:80]!r} is not a number", field="answer",
            fix="use verifier 'math' for non-numeric answers",
        )
    return numeric_verdict(completion, gold)
