"""Resolve a :class:`DataConfig` into a pool, named target sets and named test sets."""

from __future__ import annotations

from dataclasses import dataclass, field

from cropi.config import DataConfig
from cropi.data.io import dataset_fingerprint, load_prompts
from cropi.data.schema import PromptRecord
from cropi.utils.errors import CropiError


@dataclass
class DataSets:
    pool: list[PromptRecord]
    targets: dict[str, list[PromptRecord]]
    tests: dict[str, list[PromptRecord]] = field(default_factory=dict)

    def fingerprints(self) -> dict[str, str]:
        out = {"pool": dataset_fingerprint(self.pool)}
        out.update({f"target/{k}": dataset_fingerprint(v) for k, v in self.targets.items()})
        return out


def load_sets(cfg: DataConfig) -> DataSets:
    """Built-in suite first, then files given in the config replace its parts."""
    pool: list[PromptRecord] = []
    targets: dict[str, list[PromptRecord]] = {}
    tests: dict[str, list[PromptRecord]] = {}
    if cfg.suite:
        from cropi.data.suites import build_suite

        suite = build_suite(cfg.suite, cfg.seed)
        pool, targets, tests = suite.pool, dict(suite.targets), dict(suite.tests)
    if cfg.pool:
        pool = load_prompts(cfg.pool, cfg.converter, cfg.max_prompt_chars)
    if cfg.targets:
        targets = {n: load_prompts(p, cfg.converter, cfg.max_prompt_chars) for n, p in cfg.targets.items()}
    if cfg.tests:
        tests = {n: load_prompts(p, cfg.converter, cfg.max_prompt_chars) for n, p in cfg.tests.items()}
    if not targets:
        raise CropiError("no target (validation) set", field="data.targets",
                         fix="give at least one target file, e.g. --target gsm8k=val.jsonl")
    files = {"pool": cfg.pool, **{f"targets/{n}": p for n, p in cfg.targets.items()},
             **{f"tests/{n}": p for n, p in cfg.tests.items()}}
    sets = {"pool": pool, **{f"targets/{n}": r for n, r in targets.items()},
            **{f"tests/{n}": r for n, r in tests.items()}}
    for name, records in sets.items():
        _check_verifiers(records, files.get(name) or name)
    return DataSets(pool, targets, tests)


def _check_verifiers(records: list[PromptRecord], where: str) -> None:
    """Fail at load time, not hours later, when a record names an unknown verifier."""
    from cropi.verify import list_verifiers

    known = set(list_verifiers())
    for row, rec in enumerate(records, start=1):
        if rec.verifier not in known:
            raise CropiError(f"names unknown verifier {rec.verifier!r}", file=where, row=row,
                             field="meta.verifier", fix=f"use one of {', '.join(sorted(known))}")
