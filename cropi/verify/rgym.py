"""The ``reasoning_gym`` verifier: reasoning-gym's own scorer, binarised.

The record carries the generator's entry: ``meta["rg"] = {"dataset": name, "entry": {"question",
"answer", "metadata"}}``. The candidate answer is the ``<answer>`` tag content, else a
``\\boxed{}``; else, for a numeric gold, the last number, and for a word gold the last line (or
its last word when the gold is one word). It is scored with
``reasoning_gym.factory.get_score_answer_fn(dataset)(answer, entry)`` and the reward is 1 only
when that score is exactly 1.0: the default scorers give partial credit by substring
(``"50"`` scores 0.5 against gold ``"5"``), which a policy could farm.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, Callable

from cropi.utils.errors import CropiError
from cropi.verify.base import Verdict, register_verifier
from cropi.verify.extract import (
    answer_tag_content,
    canonical_number,
    last_boxed,
    last_line_or_word,
    last_number,
    normalize_text,
    parse_number,
    shown,
    tail,
    unwrap_text_macro,
)

if TYPE_CHECKING:
    from cropi.data.schema import PromptRecord

log = logging.getLogger(__name__)

ScoreFn = Callable[[Any, dict[str, Any]], float]


@functools.lru_cache(maxsize=None)
def score_fn(dataset: str) -> ScoreFn:
    """reasoning-gym's ``score_answer`` for ``dataset`` (one scorer object per name)."""
    from reasoning_gym.factory import DATASETS, get_score_answer_fn

    if dataset not in DATASETS:
        raise CropiError(
            f"unknown reasoning-gym dataset {dataset!r}", field="meta.rg.dataset",
            fix="use a name from reasoning_gym.factory.DATASETS, e.g. 'chain_sum'",
        )
    return get_score_answer_fn(dataset)


def rg_meta(record: PromptRecord) -> tuple[str, dict[str, Any]]:
    """``(dataset, entry)`` from ``record.meta["rg"]``, or a CropiError naming what is missing."""
    rg = record.meta.get("rg")
    if not isinstance(rg, dict) or not isinstance(rg.get("dataset"), str):
        raise CropiError(
            "reasoning_gym verifier needs meta.rg.dataset", field="meta.rg",
            fix='set meta.rg = {"dataset": <name>, "entry": <the generated entry>}',
        )
    entry = rg.get("entry")
    if not isinstance(entry, dict):
        raise CropiError("reasoning_gym verifier needs meta.rg.entry (a JSON object)", field="meta.rg")
    return rg["dataset"], entry


def _number_candidate(region: str) -> str | None:
    value = parse_number(region)
    written = region.strip() if value is not None else last_number(region)
    if written is None:
        return None
    value = value if value is not None else parse_number(written)
    return written.strip() if value is None else canonical_number(value, written)


def rg_candidate(completion: str, gold: str | None) -> str | None:
    """The answer string to hand to the scorer (see the module docstring)."""
    text = normalize_text(tail(completion))
    region = answer_tag_content(text)
    if region is None:
        region = last_boxed(text)
    if region is not None:
        region = unwrap_text_macro(region)
    if gold is not None and parse_number(gold) is not None:
        return _number_candidate(text if region is None else region)
    if region is not None:
        return region.strip() or None
    single_word = gold is not None and len(gold.split()) <= 1
    return last_line_or_word(text, single_word)


@register_verifier("reasoning_gym")
def verify_reasoning_gym(completion: str, record: PromptRecord) -> Verdict:
    dataset, entry = rg_meta(record)
    scorer = score_fn(dataset)
    gold = entry.get("answer")
    candidate = rg_candidate(completion, None if gold is None else str(gold))
    if candidate is None:
        return Verdict(0.0, None, "no answer found")
    score = float(scorer(candidate, entry))
    return Verdict.of(score == 1.0, shown(candidate), f"reasoning-gym {dataset} score {score!r}")
