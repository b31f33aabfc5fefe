"""The ``reasoning_gym`` verifier on real generated entries, binarised scores included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cropi.data.schema import PromptRecord
from cropi.utils.errors import CropiError
from cropi.verify import verify
from cropi.verify.rgym import rg_candidate, score_fn

rg = pytest.importorskip("reasoning_gym")

DATASETS: dict[str, dict[str, Any]] = {
    "chain_sum": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1),
    "leg_counting": {},
    "gcd": {},
    "spell_backward": {},  # gold is one word
    "letter_jumble": {},  # gold is a sentence
}
NUMERIC = {"chain_sum", "leg_counting", "gcd"}


def entries(name: str) -> list[dict[str, Any]]:
    ds = rg.create_dataset(name, seed=1, size=5, **DATASETS[name])
    return [json.loads(json.dumps(e, default=list)) for e in ds]  # as stored: tuples -> lists


def rg_record(name: str, entry: dict[str, Any]) -> PromptRecord:
    return PromptRecord(id="r", prompt=[{"role": "user", "content": entry["question"]}],
                        answer=str(entry["answer"]), source=name,
                        meta={"verifier": "reasoning_gym", "rg": {"dataset": name, "entry": entry}})


CASES = [(name, i) for name in DATASETS for i in range(5)]


def wrong_answer(name: str, gold: str) -> str:
    if name in NUMERIC:
        return str(int(gold) + 1)
    words = gold.split()
    return " ".join(words[:-1]) if len(words) > 1 else gold[::-1] + "x"


def reward(completion: str, rec: PromptRecord) -> float:
    verdict = verify(completion, rec)
    assert type(verdict.reward) is float and verdict.reward in (0.0, 1.0)
    return verdict.reward


@pytest.mark.parametrize(("name", "i"), CASES)
def test_gold_scores_one_in_every_wrapping(name: str, i: int) -> None:
    rec = rg_record(name, entries(name)[i])
    gold = rec.answer
    for completion in (gold, f" {gold} ", f"<answer>{gold}</answer>",
                       f"Let me think.\n<answer> {gold} </answer>", f"$\\boxed{{{gold}}}$",
                       f"Working...\nThe answer is {gold}."):
        assert reward(completion, rec) == 1.0, completion


@pytest.mark.parametrize(("name", "i"), CASES)
def test_wrong_and_partial_credit_answers_score_zero(name: str, i: int) -> None:
    entry = entries(name)[i]
    rec = rg_record(name, entry)
    gold = rec.answer
    assert reward(wrong_answer(name, gold), rec) == 0.0
    assert reward(gold + "0", rec) == 0.0
    assert reward(f"<answer>{gold}0</answer>", rec) == 0.0
    assert reward("", rec) == 0.0
    assert reward("I do not know", rec) == 0.0


def test_the_partial_credit_trap_exists_and_is_binarised() -> None:
    entry = {"question": "gcd?", "answer": "5", "metadata": {}}
    raw = score_fn("gcd")
    assert raw("50", entry) == 0.5 and raw(" 5", entry) == 0.5  # reasoning-gym's own scorer
    rec = rg_record("gcd", entry)
    assert reward("50", rec) == 0.0
    assert reward(" 5 ", rec) == 1.0
    assert reward("5.0", rec) == 1.0  # canonicalised before scoring (raw score is 0.33)


def test_spell_backward_float_trap_is_binarised() -> None:
    entry = entries("spell_backward")[0]  # gold 'ainomma'
    assert 0.99 < score_fn("spell_backward")(entry["answer"] + "0", entry) < 1.0
    assert reward(entry["answer"] + "0", rg_record("spell_backward", entry)) == 0.0


def test_negative_gold_answers() -> None:
    negatives = [e for e in entries("chain_sum") if e["answer"].startswith("-")]
    assert negatives, "the seeded chain_sum set has negative answers"
    for entry in negatives:
        rec = rg_record("chain_sum", entry)
        assert reward(f"so the sum is {entry['answer']}", rec) == 1.0
        assert reward(f"so the sum is {entry['answer'][1:]}", rec) == 0.0


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("2,842", "2842", "2842"),
        ("\\boxed{3.0}", "3", "3"),
        ("1.26e+02", "126", "126"),
        ("I think 41 or 43", "43", "43"),
        ("<answer>about 7</answer>", "7", "7"),
        ("The word is: ainomma.", "ainomma", "ainomma"),
        ("**Answer:** a b c.", "x y z", "a b c"),
        ("<answer> \\text{yes} </answer>", "yes", "yes"),
        ("", "5", None),
    ],
)
def test_rg_candidate(completion: str, gold: str, expected: str | None) -> None:
    assert rg_candidate(completion, gold) == expected


def test_bad_records_raise_cropi_error() -> None:
    bare = PromptRecord(id="r", prompt=[{"role": "user", "content": "q"}], answer="1",
                        source="x", meta={"verifier": "reasoning_gym"})
    with pytest.raises(CropiError, match="meta.rg"):
        verify("1", bare)
    unknown = rg_record("no_such_dataset", {"question": "q", "answer": "1", "metadata": {}})
    with pytest.raises(CropiError, match="unknown reasoning-gym dataset"):
        verify("1", unknown)


def test_scorer_is_cached_per_dataset() -> None:
    assert score_fn("gcd").__self__ is score_fn("gcd").__self__
