"""Built-in task suites: determinism, counts, disjoint splits, valid records, scorable answers."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any, Callable

import pytest

from cropi.data.io import load_prompts
from cropi.data.schema import validate_record
from cropi.data.suite_specs import CS1, CS_HARD, FAMILIES, PROD1, SUITES, FamilySpec, SuiteSpec
from cropi.data.suites import (
    Suite,
    build_suite,
    build_suite_from_spec,
    describe_suite,
    get_suite_spec,
    list_suites,
    load_suite,
    write_suite,
)
from cropi.utils.errors import CropiError

ALL = ["tiny", "default-small", "default", "arith-ladder", "rg-numeric", "rg-lcm-seq", "difficulty-ladder"]


@cache
def _built(name: str, seed: int = 0) -> Suite:
    return build_suite(name, seed)


@cache
def _scorer(dataset: str) -> Callable[[str, dict[str, Any]], float]:
    from reasoning_gym.factory import get_score_answer_fn

    return get_score_answer_fn(dataset)


def _records(suite: Suite) -> list[Any]:
    return [r for recs in suite.splits().values() for r in recs]


def _question(rec: Any) -> str:
    return rec.meta["rg"]["entry"]["question"]


def _perturb(gold: str) -> str:
    """gold + '0', unless that is numerically the same answer (gold '0' -> '00')."""
    wrong = gold + "0"
    try:
        if float(wrong) == float(gold):
            wrong = gold + "1"
    except ValueError:
        pass
    return wrong


def test_list_suites_names_and_descriptions() -> None:
    suites = list_suites()
    assert set(ALL) <= set(suites)
    assert all(len(desc) > 40 for desc in suites.values())
    assert "200 distinct questions" in suites["default"]  # tiny spaces are stated
    assert "| cs1 | chain_sum |" in describe_suite("default")


def test_unknown_suite_raises() -> None:
    with pytest.raises(CropiError, match="unknown suite 'nope'.*default"):
        build_suite("nope")


def test_same_seed_same_records_other_seed_differs() -> None:
    a, b, c = build_suite("tiny", 0), build_suite("tiny", 0), build_suite("tiny", 1)
    dump = lambda s: [r.to_dict() for r in _records(s)]  # noqa: E731
    assert dump(a) == dump(b)
    assert sorted(r.id for r in _records(a)) == sorted(r.id for r in _records(c))  # stable ids
    assert [_question(r) for r in _records(a)] != [_question(r) for r in _records(c)]
    big = build_suite("default-small", 0)
    assert [r.to_dict() for r in _records(big)] == [r.to_dict() for r in _records(_built("default-small"))]


@pytest.mark.parametrize("name", ALL)
def test_counts_per_family_and_split(name: str) -> None:
    spec, suite = get_suite_spec(name), _built(name)
    built = {"pool": suite.pool}
    built.update({f"target.{t}": r for t, r in suite.targets.items()})
    built.update({f"test.{t.replace('/', '.')}": r for t, r in suite.tests.items()})
    assert set(built) == set(spec.item_lists())
    for split, items in spec.item_lists().items():
        assert len(built[split]) == sum(c for _, c in items)
        for fam, count in items:
            recs = [r for r in built[split] if r.source == fam.name]
            assert len(recs) == count, (split, fam.name)
            assert {r.level for r in recs} == {fam.level}
            assert all(r.meta["rg"]["dataset"] == fam.dataset for r in recs)
    assert all(t.startswith(("targeted/", "untargeted/")) for t in suite.tests)


@pytest.mark.parametrize("name", ALL)
def test_no_question_in_two_places_and_unique_ids(name: str) -> None:
    records = _records(_built(name))
    questions = [_question(r) for r in records]
    assert len(set(questions)) == len(questions)
    assert len({r.id for r in records}) == len(records)
    prompts = [r.prompt[0]["content"] for r in records]
    assert len(set(prompts)) == len(prompts)


@pytest.mark.parametrize("name", ALL)
def test_records_validate_and_are_json(name: str) -> None:
    for rec in _records(_built(name)):
        d = rec.to_dict()
        assert validate_record(json.loads(json.dumps(d))) == rec
        fam = FAMILIES[rec.source]
        assert rec.id.startswith(f"{rec.source}-")
        assert d["prompt"] == [{"role": "user", "content": _question(rec).rstrip() + fam.instruction}]
        assert rec.meta["verifier"] == "reasoning_gym"
        assert rec.meta["answer_format"] == fam.answer_format
        assert rec.answer == rec.meta["rg"]["entry"]["answer"]


@pytest.mark.parametrize("name", ALL)
def test_gold_scores_one_and_wrong_answers_less(name: str) -> None:
    for rec in _records(_built(name)):
        entry = json.loads(json.dumps(rec.meta["rg"]["entry"]))  # exactly what a reader gets back
        score = _scorer(rec.meta["rg"]["dataset"])
        assert score(rec.answer, entry) == 1.0, rec.id
        assert score(_perturb(rec.answer), entry) < 1.0, rec.id
        assert score("xyz", entry) < 0.1, rec.id


@pytest.mark.parametrize("name", ["tiny", "default-small"])
def test_write_then_load_round_trip(name: str, tmp_path: Path) -> None:
    suite = _built(name)
    folder = write_suite(suite, tmp_path / name)
    assert (folder / "pool.jsonl").exists() and (folder / "suite.json").exists()
    for t in suite.targets:
        assert load_prompts(folder / "targets" / f"{t}.jsonl") == suite.targets[t]
    for t in suite.tests:
        assert load_prompts(folder / "tests" / f"{t}.jsonl") == suite.tests[t]
    assert load_prompts(folder / "pool.jsonl") == suite.pool
    assert load_suite(folder) == suite


def test_load_suite_without_manifest_raises(tmp_path: Path) -> None:
    with pytest.raises(CropiError, match="suite.json"):
        load_suite(tmp_path)


def test_too_small_question_space_names_the_family() -> None:
    spec = SuiteSpec(name="x", description="", pool=[(PROD1, 80), (CS_HARD, 4)],
                     tests={"targeted/p": [(PROD1, 30)]})
    with pytest.raises(CropiError, match="prod1.*too few distinct questions"):
        build_suite_from_spec(spec)
    ok = SuiteSpec(name="x", description="", pool=[(PROD1, 60)], tests={"targeted/p": [(PROD1, 40)]})
    suite = build_suite_from_spec(ok)  # exactly the whole space of 100 questions
    assert len({_question(r) for r in _records(suite)}) == 100


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tests={"chain": [(CS1, 4)]}), "targeted/<word>"),
        (dict(targets={"a/b": [(CS1, 4)]}), "target name"),
        (dict(pool=[(CS1, 4), (CS1, 2)]), "twice"),
        (dict(pool=[(CS1, 0)]), "must be > 0"),
        (dict(pool=[(CS1, 4), (replace(CS1, level="other"), 2)]), "twice"),
        (dict(pool=[(CS1, 4)], targets={"t": [(replace(CS1, level="other"), 2)]}), "two different"),
        (dict(pool=[]), "empty pool"),
    ],
)
def test_spec_validation(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = dict(name="x", description="", pool=[(CS1, 4)])
    args.update(kwargs)
    with pytest.raises(CropiError, match=match):
        SuiteSpec(**args)


def test_family_spec_validation() -> None:
    with pytest.raises(CropiError, match="family name"):
        FamilySpec(name="a-b", dataset="chain_sum", config={}, level="x")
    with pytest.raises(CropiError, match="answer_format"):
        FamilySpec(name="a", dataset="chain_sum", config={}, level="x", answer_format="json")


def test_bad_config_is_a_cropi_error() -> None:
    bad = replace(CS1, name="bad", config={"min_terms": 2, "no_such_field": 1})
    with pytest.raises(CropiError, match="reasoning-gym rejects family 'bad'"):
        build_suite_from_spec(SuiteSpec(name="x", description="", pool=[(bad, 2)]))


@pytest.mark.parametrize("family, space", [("cs1", 200), ("prod1", 100), ("gcd20", 400)])
def test_documented_tiny_question_spaces(family: str, space: int) -> None:
    import reasoning_gym

    fam = FAMILIES[family]
    ds = reasoning_gym.create_dataset(fam.dataset, seed=5, size=20 * space, **fam.config)
    assert len({ds[i]["question"] for i in range(20 * space)}) == space


def test_every_suite_uses_catalogued_families() -> None:
    for spec in SUITES.values():
        for items in spec.item_lists().values():
            for fam, _ in items:
                assert replace(fam, level=FAMILIES[fam.name].level) == FAMILIES[fam.name]


def test_same_records_in_another_process_with_another_hash_seed() -> None:
    import os
    import subprocess
    import sys

    from cropi.data.io import dataset_fingerprint

    code = ("from cropi.data.suites import build_suite; from cropi.data.io import dataset_fingerprint;"
            "s = build_suite('default-small', 3); "
            "print(dataset_fingerprint([r for v in s.splits().values() for r in v]))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    here = build_suite("default-small", 3)
    assert out.stdout.strip() == dataset_fingerprint([r for v in here.splits().values() for r in v])
