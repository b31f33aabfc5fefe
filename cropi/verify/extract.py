"""Answer extraction from completions: ``<answer>`` tags, ``\\boxed{...}``, numbers.

Every helper looks only at the last :data:`TAIL_CHARS` characters of its input, so a pathological
completion (100 kB of digits, 10k nested braces) costs at most a linear scan of that tail.
Numbers are exact :class:`fractions.Fraction` values: ``2,842``, ``-7``, ``0.5``, ``3/4``,
``\\frac{3}{4}``, ``1.26e+02``.
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

TAIL_CHARS = 2000
MAX_BOXED_TRIES = 8
MAX_EXPONENT = 1000  # |e| of e-notation above which a number is not parsed (10**1e6 is slow)
MAX_SHOWN = 200  # characters of an extracted answer kept in a Verdict

_ANSWER_TAG = re.compile(
    r"<answer\s*>((?:(?!<answer\s*>).)*?)</answer\s*>", re.IGNORECASE | re.DOTALL
)
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_BARE_ARG = re.compile(r"[ \t]+([^\s$]+)")
_WHOLE_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{(.*)\}", re.DOTALL)
_TEXT_MACRO = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")

_UNSIGNED = (
    r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
    r"|\.[0-9]+(?:[eE][+-]?[0-9]+)?"
)
_SIGN = r"(?:(?<![0-9A-Za-z_.)\]}])-)?"  # "5-7" is a subtraction, "= -7" a negative number
_NUMBER = re.compile(
    rf"(?P<tsign>{_SIGN})\\[dt]?frac\s*\{{\s*(?P<tnum>-?(?:{_UNSIGNED}))\s*\}}"
    rf"\s*\{{\s*(?P<tden>-?(?:{_UNSIGNED}))\s*\}}"
    rf"|(?P<num>{_SIGN}(?:{_UNSIGNED}))(?:\s*/\s*(?P<den>-?(?:{_UNSIGNED})))?"
)
_LATEX_SPACING = re.compile(r"\\[,!;: ]|\{,\}")
_LEAD_IN = re.compile(
    r"^(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*[:=]?\s*|^[A-Za-z]\s*=\s*", re.IGNORECASE
)
_WORD_PUNCT = ".,;:!?\"'`*()[]{}<>"


def tail(text: str, n: int = TAIL_CHARS) -> str:
    """The last ``n`` characters of ``text``."""
    return text[-n:] if len(text) > n else text


def normalize_text(text: str) -> str:
    """NFKC (full-width digits become ASCII) and the Unicode minus sign as ``-``."""
    return unicodedata.normalize("NFKC", text).replace("\u2212", "-")


def shown(text: str | None) -> str | None:
    """An extracted answer cut to :data:`MAX_SHOWN` characters for a Verdict."""
    return None if text is None else text[:MAX_SHOWN]


def answer_tag_content(text: str) -> str | None:
    """The inside of the last complete ``<answer>...</answer>`` pair, or None."""
    last = None
    for last in _ANSWER_TAG.finditer(tail(text)):
        pass
    return None if last is None else last.group(1)


def strip_answer_tags(text: str) -> str:
    """The content of the last answer-tag pair if there is one, else ``text`` unchanged."""
    inner = answer_tag_content(text)
    return text if inner is None else inner


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at ``text[start] == "{"``; None if unterminated."""
    depth, j, n = 0, start, len(text)
    while j < n:
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : j]
        j += 1
    return None


def _box_argument(text: str, pos: int) -> str | None:
    """The argument of a box command whose name ends at ``pos``: ``{...}`` or ``\\boxed 42``."""
    if text[pos : pos + 1] == "{":
        return _braced(text, pos)
    m = _BARE_ARG.match(text, pos)
    return m.group(1) if m else None


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (or ``\\fbox``), nested braces allowed."""
    text = tail(text)
    end = len(text)
    for _ in range(MAX_BOXED_TRIES):
        start, cmd = max((text.rfind(c, 0, end), c) for c in _BOX_COMMANDS)
        if start < 0:
            return None
        content = _box_argument(text, start + len(cmd))
        if content is not None:
            return content
        end = start
    return None


def unwrap_text_macro(text: str) -> str:
    """``\\text{yes}`` -> ``yes`` (only when the macro is the whole string)."""
    m = _TEXT_MACRO.fullmatch(text.strip())
    return m.group(1).strip() if m else text.strip()


def marked_answer(text: str) -> str | None:
    """The explicitly marked answer: answer-tag content (or a box inside it), else the last
    box; None when the text marks no answer."""
    tagged = answer_tag_content(text)
    boxed = last_boxed(tail(text) if tagged is None else tagged)
    return boxed if boxed is not None else tagged


def answer_region(text: str) -> str:
    """The marked answer if there is one, else the text's tail."""
    marked = marked_answer(text)
    return tail(text) if marked is None else marked


def last_number(text: str) -> str | None:
    """The last number in ``text`` as written (``-7``, ``2,842``, ``3/4``, ``\\frac{1}{2}``)."""
    last = None
    for last in _NUMBER.finditer(tail(text)):
        pass
    return None if last is None else last.group(0)


def _unsigned_value(s: str) -> Fraction | None:
    s = s.replace(",", "")
    m = re.search(r"[eE]([+-]?[0-9]+)$", s)
    if m and abs(int(m.group(1))) > MAX_EXPONENT:
        return None
    return Fraction(s)


def _match_value(m: re.Match[str]) -> Fraction | None:
    if m.group("tnum") is not None:
        num, den, neg = m.group("tnum"), m.group("tden"), m.group("tsign") == "-"
    else:
        num, den, neg = m.group("num"), m.group("den"), False
    top = _signed_value(num)
    bottom = Fraction(1) if den is None else _signed_value(den)
    if top is None or bottom is None or bottom == 0:
        return None
    value = top / bottom
    return -value if neg else value


def _signed_value(s: str) -> Fraction | None:
    if s.startswith("-"):
        value = _unsigned_value(s[1:])
        return None if value is None else -value
    return _unsigned_value(s)


def parse_number(text: str | None) -> Fraction | None:
    """The value of a string that is *only* a number (surrounding space, ``$``, a final ``.``,
    ``\\boxed{}``/``\\text{}`` wrappers, an ``x =`` or "answer:" lead-in allowed), else None."""
    if text is None:
        return None
    s = _LATEX_SPACING.sub("", normalize_text(tail(text))).strip().strip("$").strip()
    boxed = _WHOLE_BOX.fullmatch(s)
    s = unwrap_text_macro(boxed.group(1) if boxed else s)
    s = _LEAD_IN.sub("", s, count=1).rstrip(".").strip()
    m = _NUMBER.fullmatch(s)
    return None if m is None else _match_value(m)


def numeric_answer(text: str) -> tuple[str | None, Fraction | None]:
    """The candidate answer in ``text`` and its value: a marked answer (tag / box) that is a
    number as a whole, else the last number in the marked answer or in the text."""
    text = normalize_text(tail(text))
    marked = marked_answer(text)
    if marked is not None:
        value = parse_number(marked)
        if value is not None:
            return marked.strip(), value
    found = last_number(text if marked is None else marked)
    return found, parse_number(found)


def numbers_close(a: Fraction, b: Fraction, rel_tol: float = 1e-6) -> bool:
    """``|a - b| <= rel_tol * max(|a|, |b|)``, exact (so 0 only matches 0)."""
    if a == b:
        return True
    return abs(a - b) <= Fraction(str(rel_tol)) * max(abs(a), abs(b))


def canonical_number(value: Fraction, written: str) -> str:
    """An integer value as plain digits (``3.0``, ``2,842``, ``1.26e+02`` -> ``3``, ``2842``,
    ``126``); otherwise ``written`` without thousands separators and spaces."""
    if value.denominator == 1:
        return str(value.numerator)
    return re.sub(r"\s+", "", written.replace(",", ""))


def last_line_or_word(text: str, single_word: bool) -> str | None:
    """The last non-empty line (lead-in like "Answer:" and a final ``.`` removed), or, when
    ``single_word``, its last word stripped of punctuation."""
    lines = [line.strip() for line in tail(text).splitlines() if line.strip()]
    if not lines:
        return None
    line = _LEAD_IN.sub("", lines[-1].strip("*# "), count=1).strip("*# ")
    if single_word:
        words = line.split()
        word = words[-1].strip(_WORD_PUNCT) if words else ""
        return word or None
    line = line.rstrip(".").strip()
    return line or None
