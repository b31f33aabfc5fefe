"""What the built-in task suites are made of: reasoning-gym families, levels and counts.

A *family* is one reasoning-gym generator with a fixed config (our label, e.g. ``cs1``). A *suite*
is a pool, named target (validation) sets and named test sets, each a list of (family, count).
:mod:`cropi.data.suites` turns a spec into prompt records.

Accuracy of SmolLM2-135M-Instruct on each family, measured on the development machine (2-core CPU;
n=50 each, with the instruction " Give only the final answer as a number."; greedy / sampled at
T=1.0; "pilot" is beta's pass rate in a pilot rollout run at K=8 / K=32, T=1.0, max 48
tokens). "space" is the number of distinct questions the generator can produce (counted by
enumerating 200k draws; a suite can never use more).

======== ===================================== ========== ========= ============= ===========
family   reasoning-gym config                  greedy     T=1.0     pilot K=8/32  space
======== ===================================== ========== ========= ============= ===========
add1     basic_arithmetic 2 terms 1 digit +    0.88       0.34      -             ~4,800
arith1   basic_arithmetic 2 terms 1 digit +-*  0.72       0.26      0.087 / 0.089 ~10,000
arith3   basic_arithmetic 3 terms 1-2 digits   0.10       0.02      -             large
cs1      chain_sum 2 terms 1 digit             0.30       0.18      0.087 / 0.145 **200**
cs3t     chain_sum 3 terms 1 digit             0.08       0.06      -             4,000
cs2d     chain_sum 2 terms 2 digits            0.06       0.00      0.000 / 0.016 16,200
cs_hard  chain_sum 3-4 terms 2-3 digits        0.00       0.00      -             large
prod1    products 2 terms 1 digit              0.68       0.10      -             **100**
prod12   products 2 terms 1-2 digits (half     0.34       0.04      0.075 / 0.069 8,200
         the items 1x1, half 2x2 digits)
prod3    products 3 terms 1 digit              unmeasured                         1,000
prod22   products 2 terms 2 digits             ~0 (inferred from prod12 vs prod1) 8,100
gcd20    gcd of 2 numbers in 1..20             0.28       0.10      0.113 / 0.134 **400**
legs2    leg_counting 2 animals                0.00       0.00      -             large
frac     fraction_simplification values<=20,   0.04       0.02      -             640
         plain a/b style
gsm      gsm_symbolic (default)                0.04       0.00      -             large
syllog   syllogism (default), Yes/No answer    unmeasured: "Yes" is gold in ~70 %  large
weekday  calendar_arithmetic weekday_of_date   unmeasured: chance 1/7 if it names  ~10,000
                                               a weekday (needs date arithmetic)
======== ===================================== ========== ========= ============= ===========

Families of ``rg-numeric`` (benchmarks/family_calibration.py, n=32: greedy / mean pass rate of
K=8 responses at T=0.5 / share of prompts with mixed rewards, i.e. with a gradient; cs1 and gcd20
measured alongside: 0.28 / 0.25 / 0.69 and 0.25 / 0.16 / 0.50):

========= ========================================== ====== ====== ===== =========
family    reasoning-gym config                        greedy T=0.5  mixed space
========= ========================================== ====== ====== ===== =========
letters   letter_counting, 3-5 words                  0.12   0.10   0.53  large
lcm20     lcm of 2 numbers in 2..20                   0.22   0.18   0.41  **360**
aiw       aiw (Alice in Wonderland siblings)          0.06   0.06   0.34  large
lineq     simple_equations 2 terms, values 1..10 +-   0.09   0.09   0.25  large
seq       number_sequence (default)                   0.16   0.13   0.28  ~1,900
primes30  count_primes up to 30                       0.00   0.07   0.41  462
bits255   count_bits up to 255                        0.03   0.04   0.12  255
========= ========================================== ====== ====== ===== =========

basic_arithmetic keeps reasoning-gym's defaults for parentheses and negation (``4 + -8``), as in
the measurements. No reasoning-gym family is "solved" by this model under sampling at T=1.0; add1
is the closest (greedy 0.88; sampling at T=0.5 was measured to be close to greedy). Structured
answers (lists, JSON, times) scored 0 on this model in the same measurements, so the only
non-numeric families are one-word answers (syllog, weekday); their pass rates were not measured.

Suites (``describe_suite(name)`` prints the full table):

- ``default`` (pool 480) / ``default-small`` (pool 128, for the demo and CI): built to make
  selection matter. Two contrastive targets, ``chain`` (cs1) and ``gcd`` (gcd20), both
  learnable (10-30 % pass rate) so their target gradients rest on many prompts; the pool holds them
  plus cs2d (the next chain_sum level), learnable untargeted numeric families (arith1, prod1, add1),
  one-word-answer families with a non-zero pass rate by chance (syllog, weekday: pass-rate selection
  likes them, influence should not) and ~0 % families (prod22, cs_hard, arith3, legs2, frac, gsm:
  zero-variance groups that every method skips). About 30 % of the pool is target-relevant, so a
  10 % random or pass-rate selection spends most of its budget elsewhere. Tests: targeted/chain,
  targeted/gcd, untargeted/arith, untargeted/products (prod1 + prod22 = "products up to 2 digits").
  cs1 (200 questions), gcd20 (400) and prod1 (100) bound the counts: default uses 180, 180 and 82.
- ``tiny`` (pool 24): cs1, add1, cs_hard; target chain 8; tests of 8. For unit tests.
- ``rg-numeric`` (pool 112): seven families no other suite uses (table above), 16 each; targets
  ``letters`` and ``lcm`` (24 each); tests targeted/letters and targeted/lcm of 200 (enough
  held-out items to compare training arms), untargeted/aiw and untargeted/lineq of 100. Most
  letter counts are 1: answering 1 every time scores 0.615 on targeted/letters (lcm: 0.05).
- ``rg-lcm-seq`` (pool 112): rg-numeric's pool with targets ``lcm`` and ``seq`` (24 each), tests
  targeted/lcm and targeted/seq of 200, untargeted/letters and untargeted/aiw of 100: targets
  without a dominant answer, for the acceleration benchmark.
- ``arith-ladder`` (pool 288): chain_sum, products and basic_arithmetic at levels L1-L3, 32 each;
  targets at L2 (chain = cs3t, products = prod3); tests of 50 per family and level.
- ``difficulty-ladder`` (pool 144): gcd, lcm and chain_sum each at four increasing settings with
  ordinal levels d1-d4 (12 each); targets gcd at d3 and chain at d2; for measuring whether the
  selections move to harder levels across stages (the selection analysis reads d1-d4 as numbers).

Pitfall: ``simple_equations`` with custom ``operators`` needs a matching ``operators_weights``
(``lineq`` sets both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from cropi.utils.errors import CropiError

NUMBER = " Give only the final answer as a number."
WORD = " Give only the final answer as one word."
ANSWER_FORMATS = ("number", "fraction", "word")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class FamilySpec:
    """One reasoning-gym generator with a fixed config.

    ``name`` is our label (record ``source``), ``level`` the record's difficulty label,
    ``instruction`` is appended to the question, ``answer_format`` (number, fraction, word) tells a
    verifier how to extract the answer, ``expected`` notes the measured pass rates.
    """

    name: str
    dataset: str
    config: dict[str, Any]
    level: str
    instruction: str = NUMBER
    answer_format: str = "number"
    expected: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise CropiError(f"family name {self.name!r} must be letters, digits or '_'")
        if self.answer_format not in ANSWER_FORMATS:
            raise CropiError(
                f"family {self.name!r}: answer_format {self.answer_format!r}",
                fix=f"use one of {', '.join(ANSWER_FORMATS)}",
            )


Items = list[tuple[FamilySpec, int]]


@dataclass(frozen=True)
class SuiteSpec:
    """A named suite: pool, target sets and test sets as (family, count) lists.

    Test names start with ``targeted/`` or ``untargeted/``; target names are plain words.
    """

    name: str
    description: str
    pool: Items
    targets: dict[str, Items] = field(default_factory=dict)
    tests: dict[str, Items] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.pool:
            raise CropiError(f"suite {self.name!r} has an empty pool")
        for tname in self.targets:
            if not _NAME.match(tname):
                raise CropiError(f"suite {self.name!r}: target name {tname!r} must be letters, digits or '_'")
        for tname in self.tests:
            kind, _, rest = tname.partition("/")
            if kind not in ("targeted", "untargeted") or not _NAME.match(rest):
                raise CropiError(
                    f"suite {self.name!r}: test name {tname!r}",
                    fix="name tests 'targeted/<word>' or 'untargeted/<word>'",
                )
        by_name: dict[str, FamilySpec] = {}
        for split, items in self.item_lists().items():
            _check_items(self.name, split, items, by_name)

    def item_lists(self) -> dict[str, Items]:
        """Every (family, count) list keyed by split label: pool, target.<t>, test.<kind>.<t>."""
        out = {"pool": self.pool}
        out.update({f"target.{t}": items for t, items in self.targets.items()})
        out.update({f"test.{t.replace('/', '.')}": items for t, items in self.tests.items()})
        return out


def _check_items(suite: str, split: str, items: Items, by_name: dict[str, FamilySpec]) -> None:
    """Counts positive, each family once per split, one definition per family name."""
    if not items:
        raise CropiError(f"suite {suite!r}: split {split!r} is empty")
    names = [fam.name for fam, _ in items]
    if len(set(names)) != len(names):
        raise CropiError(f"suite {suite!r}: split {split!r} lists a family twice ({names})")
    for fam, count in items:
        if not isinstance(count, int) or count <= 0:
            raise CropiError(
                f"suite {suite!r}: split {split!r}, family {fam.name!r}: count {count!r} must be > 0"
            )
        if by_name.setdefault(fam.name, fam) != fam:
            raise CropiError(f"suite {suite!r}: two different families are both named {fam.name!r}")


def _fam(name: str, dataset: str, level: str, expected: str, **config: Any) -> FamilySpec:
    return FamilySpec(name=name, dataset=dataset, config=config, level=level, expected=expected)


def _arith(name: str, level: str, expected: str, terms: tuple[int, int], digits: tuple[int, int],
           ops: list[str] | None = None) -> FamilySpec:
    cfg: dict[str, Any] = dict(min_terms=terms[0], max_terms=terms[1], min_digits=digits[0],
                               max_digits=digits[1])
    if ops is not None:
        cfg["operators"] = ops
    return FamilySpec(name=name, dataset="basic_arithmetic", config=cfg, level=level, expected=expected)


def _digits(name: str, dataset: str, level: str, expected: str, terms: tuple[int, int],
            digits: tuple[int, int]) -> FamilySpec:
    cfg = dict(min_terms=terms[0], max_terms=terms[1], min_digits=digits[0], max_digits=digits[1])
    return FamilySpec(name=name, dataset=dataset, config=cfg, level=level, expected=expected)


# ---- the family catalogue (levels: easy / learnable / guess / hard, as measured; see the table) --
ADD1 = _arith("add1", "easy", "greedy 0.88, T=1 0.34", (2, 2), (1, 1), ["+"])
ARITH1 = _arith("arith1", "learnable", "greedy 0.72, T=1 0.26; pilot 0.09", (2, 2), (1, 1), ["+", "-", "*"])
ARITH3 = _arith("arith3", "hard", "greedy 0.10, T=1 0.02", (3, 3), (1, 2))
CS1 = _digits("cs1", "chain_sum", "learnable", "greedy 0.30, T=1 0.18; pilot 0.09-0.15; 200 questions",
              (2, 2), (1, 1))
CS3T = _digits("cs3t", "chain_sum", "hard", "greedy 0.08, T=1 0.06", (3, 3), (1, 1))
CS2D = _digits("cs2d", "chain_sum", "hard", "greedy 0.06, T=1 0.00; pilot 0.00-0.02", (2, 2), (2, 2))
CS_HARD = _digits("cs_hard", "chain_sum", "hard", "greedy 0.00, T=1 0.00", (3, 4), (2, 3))
PROD1 = _digits("prod1", "products", "learnable", "greedy 0.68, T=1 0.10; 100 questions", (2, 2), (1, 1))
PROD12 = _digits("prod12", "products", "learnable", "greedy 0.34, T=1 0.04; pilot 0.07", (2, 2), (1, 2))
PROD3 = _digits("prod3", "products", "learnable", "unmeasured", (3, 3), (1, 1))
PROD22 = _digits("prod22", "products", "hard", "~0 (inferred)", (2, 2), (2, 2))
GCD20 = _fam("gcd20", "gcd", "learnable", "greedy 0.28, T=1 0.10; pilot 0.11-0.13; 400 questions",
             min_numbers=2, max_numbers=2, min_value=1, max_value=20)
LEGS2 = _fam("legs2", "leg_counting", "hard", "greedy 0.00, T=1 0.00", min_animals=2, max_animals=2)
FRAC = replace(
    _fam("frac", "fraction_simplification", "hard", "greedy 0.04, T=1 0.02",
         min_value=1, max_value=20, min_factor=1, max_factor=5, styles=["plain"]),
    instruction=" Give only the final answer as a fraction.", answer_format="fraction",
)
GSM = _fam("gsm", "gsm_symbolic", "hard", "greedy 0.04, T=1 0.00")
SYLLOG = replace(_fam("syllog", "syllogism", "learnable", "unmeasured; 'Yes' is gold in ~70 %"),
                 instruction=WORD, answer_format="word")
WEEKDAY = replace(
    _fam("weekday", "calendar_arithmetic", "guess", "unmeasured; chance 1/7",
         tasks=["weekday_of_date"]),
    instruction=WORD, answer_format="word",
)

# families of rg-numeric (measured by benchmarks/family_calibration.py: n=32, greedy / T=0.5 mean
# pass rate at K=8 / share of prompts with mixed rewards / distinct questions in 4,000 draws)
LETTERS = _fam("letters", "letter_counting", "learnable", "greedy 0.12, T=0.5 0.10, mixed 0.53; ~4,000",
               min_words=3, max_words=5)
LCM20 = _fam("lcm20", "lcm", "learnable", "greedy 0.22, T=0.5 0.18, mixed 0.41; 360 questions",
             min_numbers=2, max_numbers=2, min_value=2, max_value=20)
AIW = _fam("aiw", "aiw", "learnable", "greedy 0.06, T=0.5 0.06, mixed 0.34; ~3,400")
LINEQ = _fam("lineq", "simple_equations", "learnable", "greedy 0.09, T=0.5 0.09, mixed 0.25; ~3,600",
             min_terms=2, max_terms=2, min_value=1, max_value=10, operators=("+", "-"),
             operators_weights=[0.5, 0.5])
SEQ = _fam("seq", "number_sequence", "learnable", "greedy 0.16, T=0.5 0.13, mixed 0.28; ~1,900")
PRIMES30 = _fam("primes30", "count_primes", "guess", "greedy 0.00, T=0.5 0.07, mixed 0.41; 462 questions",
                max_n=30)
BITS255 = _fam("bits255", "count_bits", "hard", "greedy 0.03, T=0.5 0.04, mixed 0.12; 255 questions",
               max_n=255)

# the same generators at increasing value ranges (difficulty-ladder; pass rates unmeasured except
# gcd20 and lcm20, above)
GCD10 = _fam("gcd10", "gcd", "d1", "unmeasured; 100 questions", min_numbers=2, max_numbers=2,
             min_value=1, max_value=10)
GCD50 = _fam("gcd50", "gcd", "d3", "unmeasured", min_numbers=2, max_numbers=2, min_value=1, max_value=50)
GCD100 = _fam("gcd100", "gcd", "d4", "unmeasured", min_numbers=2, max_numbers=2, min_value=1,
              max_value=100)
LCM10 = _fam("lcm10", "lcm", "d1", "unmeasured; 81 questions", min_numbers=2, max_numbers=2,
             min_value=2, max_value=10)
LCM50 = _fam("lcm50", "lcm", "d3", "unmeasured", min_numbers=2, max_numbers=2, min_value=2, max_value=50)
LCM100 = _fam("lcm100", "lcm", "d4", "unmeasured", min_numbers=2, max_numbers=2, min_value=2,
              max_value=100)

FAMILIES: dict[str, FamilySpec] = {
    f.name: f for f in (ADD1, ARITH1, ARITH3, CS1, CS3T, CS2D, CS_HARD, PROD1, PROD12, PROD3,
                        PROD22, GCD20, LEGS2, FRAC, GSM, SYLLOG, WEEKDAY,
                        LETTERS, LCM20, AIW, LINEQ, SEQ, PRIMES30, BITS255,
                        GCD10, GCD50, GCD100, LCM10, LCM50, LCM100)
}


# ---- the suites ----------------------------------------------------------------------------------
def _default(name: str, scale: str) -> SuiteSpec:
    """``default`` (pool 480) and ``default-small`` (pool 128): same families, fewer items."""
    small = scale == "small"

    def n(big: int, little: int) -> int:
        return little if small else big

    pool: Items = [
        # target-relevant: the two target families at a learnable level, and chain_sum's next level
        (CS1, n(48, 16)), (GCD20, n(48, 16)), (CS2D, n(40, 10)),
        # learnable, not targeted, same (numeric) answer format; add1 is the easiest family there is
        # (products up to 2 digits as two families, so that every split gets exactly half 1x1 items)
        (ARITH1, n(48, 12)), (PROD1, n(32, 8)), (PROD22, n(32, 8)), (ADD1, n(40, 10)),
        # not targeted, a different answer format (one word)
        (SYLLOG, n(48, 12)), (WEEKDAY, n(32, 8)),
        # hopeless for this model (~0 % sampled): zero-gradient groups for every selection method
        (CS_HARD, n(24, 6)), (ARITH3, n(24, 6)), (LEGS2, n(24, 6)), (FRAC, n(24, 6)), (GSM, n(16, 4)),
    ]
    t, k = n(32, 24), n(100, 50)
    return SuiteSpec(
        name=name,
        description=_DEFAULT_DESCRIPTION.format(
            pool=sum(c for _, c in pool), t=t, k=k, cs1=n(48, 16) + t + k, gcd=n(48, 16) + t + k,
            prod=n(32, 8) + k // 2,
        ),
        pool=pool,
        targets={"chain": [(CS1, t)], "gcd": [(GCD20, t)]},
        tests={"targeted/chain": [(CS1, k)], "targeted/gcd": [(GCD20, k)],
               "untargeted/arith": [(ARITH1, k)],
               "untargeted/products": [(PROD1, k // 2), (PROD22, k - k // 2)]},
    )


_DEFAULT_DESCRIPTION = (
    "Selection matters: pool of {pool} over 14 families, about 30 % of it relevant to the two "
    "targets (chain = chain_sum 2 terms 1 digit, greedy 0.30 / T=1 0.18; gcd = gcd of numbers <= 20, "
    "0.28 / 0.10; plus chain_sum 2 digits, ~0 %), the rest untargeted: learnable numeric (basic "
    "arithmetic +-*, products 1x1, 1-digit addition at greedy 0.88 / T=1 0.34), one-word answers "
    "(syllogism Yes/No, weekday at chance) and ~0 % distractors (2-digit products, leg counting, "
    "fractions, GSM, long chains). Targets {t} each, tests {k} each: targeted/chain, targeted/gcd, "
    "untargeted/arith, untargeted/products (half 1x1, half 2x2 digits). Tiny question spaces: "
    "chain_sum 2x1 digit has 200 distinct questions, gcd<=20 400, products 1x1 100; this suite uses "
    "{cs1}, {gcd} and {prod} of them. No question appears in two splits."
)


def _tiny() -> SuiteSpec:
    return SuiteSpec(
        name="tiny",
        description="For tests: pool 24 (chain_sum 2x1 digit, 1-digit addition, long chains at ~0 %), "
                    "target 'chain' of 8, tests targeted/chain and untargeted/add of 8 each.",
        pool=[(CS1, 8), (ADD1, 8), (CS_HARD, 8)],
        targets={"chain": [(CS1, 8)]},
        tests={"targeted/chain": [(CS1, 8)], "untargeted/add": [(ADD1, 8)]},
    )


def _ladder() -> SuiteSpec:
    """Three generators at three levels each (L1 learnable, L2 harder, L3 ~0 %)."""
    ladders = {
        "chain": (CS1, CS3T, CS2D),
        "products": (PROD1, PROD3, PROD22),
        "arith": (ADD1, ARITH1, ARITH3),
    }
    leveled = {key: [replace(f, level=f"L{i + 1}") for i, f in enumerate(fams)]
               for key, fams in ladders.items()}
    pool: Items = [(f, 32) for fams in leveled.values() for f in fams]
    tests: dict[str, Items] = {}
    for key, fams in leveled.items():
        kind = "untargeted" if key == "arith" else "targeted"
        tests.update({f"{kind}/{key}_l{i + 1}": [(f, 50)] for i, f in enumerate(fams)})
    return SuiteSpec(
        name="arith-ladder",
        description="Curriculum over levels: chain_sum (2x1 digit / 3x1 digit / 2x2 digits), products "
                    "(1x1 / 3 terms 1 digit / 2x2 digits) and basic arithmetic (+ / +-* 1 digit / 3 terms "
                    "1-2 digits), 32 each in the pool (288); targets chain and products at L2 (32 each); "
                    "tests of 50 per family and level (targeted chain/products, untargeted arith). "
                    "products 1x1 has only 100 distinct questions: 82 of them are used.",
        pool=pool,
        targets={"chain": [(leveled["chain"][1], 32)], "products": [(leveled["products"][1], 32)]},
        tests=tests,
    )


def _rg_numeric() -> SuiteSpec:
    """Seven reasoning-gym families no other suite uses; targets letters and lcm20."""
    pool: Items = [(f, 16) for f in (LETTERS, LCM20, AIW, LINEQ, SEQ, PRIMES30, BITS255)]
    return SuiteSpec(
        name="rg-numeric",
        description="Families no other suite uses, all with numeric answers: letter counting (target "
                    "'letters'), LCM of two numbers in 2..20 (target 'lcm'), Alice-in-Wonderland sibling "
                    "questions, 2-term linear equations, number sequences, prime counts up to 30 and bit "
                    "counts up to 255; 16 each in the pool (112, 2 of 7 families relevant), targets of "
                    "24, targeted tests of 200 (letters, lcm) and untargeted tests of 100 (aiw, lineq). "
                    "T=0.5 pass rates 0.04-0.18 (benchmarks/results/family_calibration.json); lcm20 "
                    "has 360 distinct questions, 240 of them used. Caveat: 61.5 % of the letters test "
                    "items have the gold answer 1, so always answering 1 scores 0.615 there "
                    "(docs/acceleration.md).",
        pool=pool,
        targets={"letters": [(LETTERS, 24)], "lcm": [(LCM20, 24)]},
        tests={"targeted/letters": [(LETTERS, 200)], "targeted/lcm": [(LCM20, 200)],
               "untargeted/aiw": [(AIW, 100)], "untargeted/lineq": [(LINEQ, 100)]},
    )


def _rg_lcm_seq() -> SuiteSpec:
    """rg-numeric's pool with targets whose answers are spread out: lcm20 and seq."""
    return SuiteSpec(
        name="rg-lcm-seq",
        description="rg-numeric's seven families (16 each in the pool, 112) with targets 'lcm' (LCM of "
                    "two numbers in 2..20) and 'seq' (next term of a number sequence), 24 each, "
                    "targeted tests of 200 and untargeted tests of 100 (letters, aiw). Made for the "
                    "acceleration benchmark: no target answer dominates (majority-answer baselines "
                    "0.055 and 0.10), so a policy that collapses onto one answer cannot look like one "
                    "that learned the targets, as letter counting's '1' did on rg-numeric.",
        pool=[(f, 16) for f in (LETTERS, LCM20, AIW, LINEQ, SEQ, PRIMES30, BITS255)],
        targets={"lcm": [(LCM20, 24)], "seq": [(SEQ, 24)]},
        tests={"targeted/lcm": [(LCM20, 200)], "targeted/seq": [(SEQ, 200)],
               "untargeted/letters": [(LETTERS, 100)], "untargeted/aiw": [(AIW, 100)]},
    )


def _difficulty_ladder() -> SuiteSpec:
    """gcd, lcm and chain_sum, each at four increasing difficulty settings with ordinal levels
    d1 < d2 < d3 < d4: a difficulty trend across stages can be measured on it."""
    ladders = {
        "gcd": (GCD10, replace(GCD20, level="d2"), GCD50, GCD100),
        "lcm": (LCM10, replace(LCM20, level="d2"), LCM50, LCM100),
        "chain": tuple(replace(f, level=f"d{i + 1}") for i, f in enumerate((CS1, CS3T, CS2D, CS_HARD))),
    }
    pool: Items = [(f, 12) for fams in ladders.values() for f in fams]
    return SuiteSpec(
        name="difficulty-ladder",
        description="Ordinal difficulty levels d1-d4 from one reasoning-gym generator each at increasing "
                    "settings: gcd of two numbers up to 10 / 20 / 50 / 100, lcm of two numbers in 2..10 / "
                    "2..20 / 2..50 / 2..100, chain_sum 2x1 digit / 3x1 digit / 2x2 digits / 3-4 terms of "
                    "2-3 digits; 12 each in the pool (144). Targets gcd at d3 (up to 50) and chain at d2 "
                    "(3 terms of 1 digit), 24 each; tests targeted/gcd and targeted/chain of 50 (the target "
                    "levels), untargeted/lcm of 50 (d2). The level is the record's `level` (d1..d4), so "
                    "the selection analysis reads it as an ordinal; pass rates unmeasured except gcd20, "
                    "lcm20 and cs1 (suite_specs tables). gcd up to 10 has 100 distinct questions, lcm "
                    "in 2..10 81.",
        pool=pool,
        targets={"gcd": [(ladders["gcd"][2], 24)], "chain": [(ladders["chain"][1], 24)]},
        tests={"targeted/gcd": [(ladders["gcd"][2], 50)], "targeted/chain": [(ladders["chain"][1], 50)],
               "untargeted/lcm": [(ladders["lcm"][1], 50)]},
    )


SUITES: dict[str, SuiteSpec] = {
    s.name: s for s in (_default("default", "full"), _default("default-small", "small"), _tiny(), _ladder(),
                        _rg_numeric(), _rg_lcm_seq(), _difficulty_ladder())
}
