"""Built-in task suites: reasoning-gym families x difficulty levels, deterministic from a seed.

A suite has a training pool, named target (validation) sets and named test sets
(``targeted/<name>`` or ``untargeted/<name>``). Everything is generated offline from
``reasoning_gym.create_dataset(dataset, seed=derive_seed(seed, suite, family, split), ...)``.

No question text appears twice in a suite: splits are filled in the order pool, targets, tests,
and every family draws items until it has ``count`` questions not used before (in any split). A
family whose question space is too small for its counts raises :class:`CropiError` naming it.

Each record: ``id = f"{family}-{split}-{i:05d}"`` with split ``pool``, ``target.<name>`` or
``test.<kind>.<name>``; ``prompt`` one user message (question + the family's instruction);
``answer`` reasoning-gym's gold answer; ``source`` the family label; ``level`` its level label;
``meta = {"verifier": "reasoning_gym", "answer_format": ..., "rg": {"dataset": ..., "entry":
{"question", "answer", "metadata"}}}`` with JSON-safe metadata that reasoning-gym's scorer accepts:
``reasoning_gym.factory.get_score_answer_fn(dataset)(answer, entry)``. Its scores are partial
credit (e.g. '50' for '5' scores 0.5; fraction_simplification never gives 0): binarize them.

The families, their measured pass rates and question-space sizes: :mod:`cropi.data.suite_specs`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cropi.data.io import dataset_fingerprint, load_prompts, save_prompts
from cropi.data.schema import PromptRecord, check_unique_ids, validate_record
from cropi.data.suite_specs import SUITES, FamilySpec, Items, SuiteSpec
from cropi.utils.errors import CropiError
from cropi.utils.io import atomic_write_json, read_json
from cropi.utils.seeding import derive_seed

__all__ = [
    "FamilySpec", "Suite", "SuiteSpec", "build_suite", "build_suite_from_spec", "describe_suite",
    "get_suite_spec", "list_suites", "load_suite", "write_suite",
]

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
_MANIFEST = "suite.json"


@dataclass
class Suite:
    """Generated prompt sets of one suite."""

    name: str
    seed: int
    pool: list[PromptRecord]
    targets: dict[str, list[PromptRecord]]
    tests: dict[str, list[PromptRecord]]

    def splits(self) -> dict[str, list[PromptRecord]]:
        """All sets keyed by their relative file stem: ``pool``, ``targets/<t>``, ``tests/<kind>/<t>``."""
        out = {"pool": self.pool}
        out.update({f"targets/{t}": recs for t, recs in self.targets.items()})
        out.update({f"tests/{t}": recs for t, recs in self.tests.items()})
        return out


def list_suites() -> dict[str, str]:
    """Built-in suite names and their one-paragraph descriptions."""
    return {name: spec.description for name, spec in SUITES.items()}


def get_suite_spec(name: str) -> SuiteSpec:
    """The spec of a built-in suite, or a :class:`CropiError` listing the known names."""
    if name not in SUITES:
        raise CropiError(f"unknown suite {name!r}", field="suite", fix=f"use one of {', '.join(SUITES)}")
    return SUITES[name]


def build_suite(name: str, seed: int = 0) -> Suite:
    """Generate the built-in suite ``name`` from ``seed`` (same seed, same records)."""
    return build_suite_from_spec(get_suite_spec(name), seed)


def build_suite_from_spec(spec: SuiteSpec, seed: int = 0) -> Suite:
    """Generate a suite from any :class:`SuiteSpec`; splits in order pool, targets, tests."""
    seen: set[str] = set()
    built = {split: _build_split(spec, seed, split, items, seen)
             for split, items in spec.item_lists().items()}
    suite = Suite(
        name=spec.name,
        seed=seed,
        pool=built["pool"],
        targets={t: built[f"target.{t}"] for t in spec.targets},
        tests={t: built[f"test.{t.replace('/', '.')}"] for t in spec.tests},
    )
    check_unique_ids([r for recs in suite.splits().values() for r in recs])
    log.info("built suite %s (seed %d): pool %d, %d targets, %d tests, %d distinct questions",
             spec.name, seed, len(suite.pool), len(suite.targets), len(suite.tests), len(seen))
    return suite


def _build_split(spec: SuiteSpec, seed: int, split: str, items: Items, seen: set[str]) -> list[PromptRecord]:
    """Records of one split, each family's drawn unseen; shuffled with a seed-derived order."""
    records: list[PromptRecord] = []
    for fam, count in items:
        rg_seed = derive_seed(seed, spec.name, fam.name, split) % (1 << 31)
        entries = _draw_unseen(fam, count, rg_seed, seen, f"suite {spec.name!r}, split {split!r}")
        records.extend(_record(fam, split, i, e) for i, e in enumerate(entries))
    random.Random(derive_seed(seed, spec.name, split, "order")).shuffle(records)
    return records


def _draw_unseen(
    fam: FamilySpec, count: int, rg_seed: int, seen: set[str], where: str
) -> list[dict[str, Any]]:
    """``count`` entries whose questions are neither in ``seen`` nor repeated; adds them to ``seen``.

    Draws 3 x count items, then 4 x more each round up to a cap (64 x count, at least 4096); a
    family that still falls short has too small a question space for the suite's counts.
    """
    import reasoning_gym

    size, cap = max(3 * count, 32), max(64 * count, 4096)
    while True:
        try:
            ds = reasoning_gym.create_dataset(fam.dataset, seed=rg_seed, size=size, **fam.config)
        except (TypeError, ValueError, AssertionError) as exc:
            raise CropiError(f"{where}: reasoning-gym rejects family {fam.name!r} ({fam.dataset}, "
                             f"{fam.config}): {exc}") from None
        picked: dict[str, dict[str, Any]] = {}
        for i in range(size):
            entry = ds[i]
            q = entry["question"]
            if q not in seen and q not in picked:
                picked[q] = entry
                if len(picked) == count:
                    seen.update(picked)
                    return list(picked.values())
        if size >= cap:
            raise CropiError(
                f"{where}: family {fam.name!r} ({fam.dataset} {fam.config}) has too few distinct "
                f"questions: {len(picked)} unused ones in {size} draws, {count} needed "
                f"({len(seen)} questions already taken by earlier splits)",
                fix="lower this family's counts or widen its config",
            )
        size = min(4 * size, cap)


def _json_safe(obj: Any) -> Any:
    """Tuples and sets become lists, keys strings, other non-JSON values their ``str``."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(_json_safe(v) for v in obj)
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return _json_safe(obj.item())
    return str(obj)


def _record(fam: FamilySpec, split: str, i: int, entry: dict[str, Any]) -> PromptRecord:
    """One :class:`PromptRecord` from a reasoning-gym entry."""
    question = str(entry["question"])
    rg_entry = {"question": question, "answer": str(entry["answer"]),
                "metadata": _json_safe(entry.get("metadata", {}))}
    raw = {
        "id": f"{fam.name}-{split}-{i:05d}",
        "prompt": [{"role": "user", "content": question.rstrip() + fam.instruction}],
        "answer": rg_entry["answer"],
        "source": fam.name,
        "level": fam.level,
        "meta": {"verifier": "reasoning_gym", "answer_format": fam.answer_format,
                 "rg": {"dataset": fam.dataset, "entry": rg_entry}},
    }
    return validate_record(raw)


def write_suite(suite: Suite, folder: str | Path) -> Path:
    """Write ``pool.jsonl``, ``targets/<t>.jsonl``, ``tests/<kind>/<t>.jsonl``, then ``suite.json``.

    The manifest is written last, so its presence means the folder is complete.
    """
    folder = Path(folder)
    files: dict[str, dict[str, Any]] = {}
    for stem, records in suite.splits().items():
        save_prompts(records, folder / f"{stem}.jsonl")
        files[stem] = {"file": f"{stem}.jsonl", "n": len(records),
                       "fingerprint": dataset_fingerprint(records)}
    manifest = {
        "format_version": FORMAT_VERSION, "name": suite.name, "seed": suite.seed,
        "targets": list(suite.targets), "tests": list(suite.tests), "files": files,
    }
    atomic_write_json(folder / _MANIFEST, manifest)
    return folder


def load_suite(folder: str | Path) -> Suite:
    """Read a folder written by :func:`write_suite`."""
    folder = Path(folder)
    if not (folder / _MANIFEST).exists():
        raise CropiError(f"has no {_MANIFEST}", file=folder,
                         fix="write it with write_suite (or it is incomplete)")
    man = read_json(folder / _MANIFEST)
    if man.get("format_version") != FORMAT_VERSION:
        raise CropiError(f"format_version {man.get('format_version')!r}", file=folder / _MANIFEST,
                         fix=f"this cropi reads version {FORMAT_VERSION}; regenerate the suite")

    def load(stem: str) -> list[PromptRecord]:
        return load_prompts(folder / f"{stem}.jsonl", converter="cropi")

    return Suite(
        name=man["name"], seed=int(man["seed"]), pool=load("pool"),
        targets={t: load(f"targets/{t}") for t in man["targets"]},
        tests={t: load(f"tests/{t}") for t in man["tests"]},
    )


def describe_suite(name: str) -> str:
    """A Markdown table of a suite's families: dataset, config, level, counts and expected rates."""
    spec = get_suite_spec(name)
    lists = spec.item_lists()
    fams: dict[str, FamilySpec] = {}
    for items in lists.values():
        fams.update({f.name: f for f, _ in items})
    cols = list(lists)
    lines = [f"{name}: {spec.description}", "",
             "| family | dataset | config | level | " + " | ".join(cols) + " | expected (SmolLM2-135M) |",
             "|" + "---|" * (len(cols) + 5)]
    for fname, fam in fams.items():
        counts = [str(dict((f.name, c) for f, c in lists[col]).get(fname, "")) for col in cols]
        cfg = ", ".join(f"{k}={v}" for k, v in fam.config.items())
        lines.append(f"| {fname} | {fam.dataset} | {cfg} | {fam.level} | " + " | ".join(counts)
                     + f" | {fam.expected} |")
    return "\n".join(lines)
