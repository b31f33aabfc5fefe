"""Answer extraction: tags, boxes, numbers, and bounded cost on pathological text."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from cropi.verify.extract import (
    answer_tag_content,
    canonical_number,
    last_boxed,
    last_line_or_word,
    last_number,
    marked_answer,
    numbers_close,
    numeric_answer,
    parse_number,
    strip_answer_tags,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>42</answer>", "42"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),
        ("<ANSWER> 7 </Answer>", " 7 "),
        ("<answer>\nmulti\nline\n</answer>", "\nmulti\nline\n"),
        ("<answer><answer>5</answer>", "5"),
        ("<answer>42", None),
        ("42</answer>", None),
        ("no tags at all", None),
        ("", None),
    ],
)
def test_answer_tag_content(text: str, expected: str | None) -> None:
    assert answer_tag_content(text) == expected


def test_strip_answer_tags_keeps_untagged_text() -> None:
    assert strip_answer_tags("just 42") == "just 42"
    assert strip_answer_tags("work... <answer>42</answer>") == "42"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$\\boxed{42}$", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{1} and later \\boxed{2}", "2"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{5} then \\boxed{", "5"),
        ("\\boxed{", None),
        ("\\boxed 42", "42"),
        ("\\fbox{7}", "7"),
        ("no box", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


def test_marked_answer_prefers_box_inside_tag() -> None:
    assert marked_answer("\\boxed{1} <answer>so \\boxed{2}</answer>") == "2"
    assert marked_answer("<answer>3</answer> \\boxed{9}") == "3"
    assert marked_answer("plain 4") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", "42"),
        ("17 + 25 = 42", "42"),
        ("I think 41 or 43", "43"),
        ("2,842 apples", "2,842"),
        ("-7", "-7"),
        ("x = -7.", "-7"),
        ("5-7", "7"),
        ("1.26e+02", "1.26e+02"),
        ("so 3/4 of them", "3/4"),
        ("half: \\frac{1}{2}", "\\frac{1}{2}"),
        ("0.5", "0.5"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_last_number(text: str, expected: str | None) -> None:
    assert last_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2,842", Fraction(2842)),
        ("2{,}842", Fraction(2842)),
        ("-7", Fraction(-7)),
        ("3/4", Fraction(3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("\\dfrac{3}{4}", Fraction(3, 4)),
        ("-\\frac{1}{2}", Fraction(-1, 2)),
        ("1.26e+02", Fraction(126)),
        (" 5 ", Fraction(5)),
        ("$5$", Fraction(5)),
        ("5.", Fraction(5)),
        ("x = 13", Fraction(13)),
        ("\\boxed{3.0}", Fraction(3)),
        ("\\text{12}", Fraction(12)),
        ("The answer is 0.25", Fraction(1, 4)),
        ("１２", Fraction(12)),
        ("\u22125", Fraction(-5)),
        ("1e99999", None),
        ("5/0", None),
        ("1,23", None),
        ("3 apples", None),
        ("abc", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_number(text: str | None, expected: Fraction | None) -> None:
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("text", "written", "value"),
    [
        ("The answer is 42.", "42", Fraction(42)),
        ("<answer> 2,842 </answer>", "2,842", Fraction(2842)),
        ("<answer>about 7 apples</answer> and 9", "7", Fraction(7)),
        ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", Fraction(1, 2)),
        ("nothing", None, None),
    ],
)
def test_numeric_answer(text: str, written: str | None, value: Fraction | None) -> None:
    assert numeric_answer(text) == (written, value)


def test_numbers_close_is_relative_and_exact_at_zero() -> None:
    assert numbers_close(Fraction(1, 2), Fraction("0.5"))
    assert numbers_close(Fraction(1_000_000), Fraction("1000000.5"))
    assert not numbers_close(Fraction(1000), Fraction("1000.01"))
    assert not numbers_close(Fraction(0), Fraction("1e-9"))
    assert not numbers_close(Fraction(5), Fraction(50))


@pytest.mark.parametrize(
    ("written", "expected"),
    [("3.0", "3"), ("2,842", "2842"), ("1.26e+02", "126"), ("-7", "-7"), ("0.5", "0.5"),
     ("3 / 4", "3/4")],
)
def test_canonical_number(written: str, expected: str) -> None:
    value = parse_number(written)
    assert value is not None
    assert canonical_number(value, written) == expected


def test_last_line_or_word() -> None:
    assert last_line_or_word("thinking\n\nThe answer is ainomma.", single_word=True) == "ainomma"
    assert last_line_or_word("x\nAnswer: a b c.\n", single_word=False) == "a b c"
    assert last_line_or_word("  \n ", single_word=True) is None


PATHOLOGICAL = {
    "100 kB digits": "7" * 100_000,
    "10k nested braces": "{" * 10_000 + "5" + "}" * 10_000,
    "10k unterminated boxes": "\\boxed{" * 10_000,
    "10k answer tags": "<answer>" * 10_000 + "1",
    "comma runs": "1," * 50_000,
    "minus runs": "-" * 100_000 + "3",
    "nested fracs": "\\frac{1}{" * 10_000,
    "digits then a box": "9" * 100_000 + "\\boxed{" + "{" * 5000,
}
HELPERS = [answer_tag_content, last_boxed, last_number, parse_number, numeric_answer, marked_answer]


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_inputs_are_fast(name: str) -> None:
    text = PATHOLOGICAL[name]
    for helper in HELPERS:
        start = time.perf_counter()
        helper(text)
        elapsed = time.perf_counter() - start
        assert elapsed < 0.2, f"{helper.__name__} took {elapsed:.3f} s on {name}"
