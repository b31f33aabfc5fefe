"""Accuracy of a policy on test sets: greedy and mean@k sampled, per family and level."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cropi.config import EvalConfig
from cropi.data.schema import PromptRecord
from cropi.rollout.collect import Policy
from cropi.rollout.sampler import SamplingParams
from cropi.utils.progress import track
from cropi.utils.seeding import derive_seed
from cropi.verify import verify
from cropi.verify.base import Verdict

log = logging.getLogger(__name__)


@dataclass
class ItemResult:
    """One test item under one mode: the verdict of each of its responses."""

    id: str
    verdicts: list[Verdict]

    @property
    def rewards(self) -> list[float]:
        return [v.reward for v in self.verdicts]

    @property
    def extracted(self) -> list[str | None]:
        return [v.extracted for v in self.verdicts]


def _order(policy: Policy, records: Sequence[PromptRecord], by_length: bool) -> list[int]:
    """Positions in generation order: by prompt length (less padding per batch) or as given."""
    if not by_length:
        return list(range(len(records)))
    lengths = [len(policy.prompt_ids(r)) for r in records]
    return sorted(range(len(records)), key=lambda i: (lengths[i], i))


def item_results(policy: Policy, records: Sequence[PromptRecord], params: SamplingParams, batch: int,
                 seed: int, bar: Any, by_length: bool = True) -> list[ItemResult]:
    """Per-item verdicts, in the order of ``records``.

    Chunks of ``batch // n`` prompts, each with its own derived seed; with ``by_length`` the
    prompts are chunked in order of their length (greedy results do not depend on the order; a
    sampled response does, through the chunk's seed).
    """
    per = max(1, batch // params.n)
    order = _order(policy, records, by_length)
    out: list[ItemResult | None] = [None] * len(records)
    for c, start in enumerate(range(0, len(order), per)):
        pos = order[start:start + per]
        chunk = [records[i] for i in pos]
        resp = policy.sampler.generate([policy.prompt_ids(r) for r in chunk], params,
                                       derive_seed(seed, c))
        for i, rec, rs in zip(pos, chunk, resp, strict=True):
            texts = [policy.tokenizer.decode(r, skip_special_tokens=True) for r in rs]
            out[i] = ItemResult(rec.id, [verify(t, rec) for t in texts])
        bar.advance(len(chunk), sum(len(r) for rs in resp for r in rs))
    return [r for r in out if r is not None]


def _rewards(policy: Policy, records: Sequence[PromptRecord], params: SamplingParams, batch: int,
             seed: int, bar: Any, by_length: bool = True) -> np.ndarray:
    """[n, params.n] rewards (see :func:`item_results`)."""
    items = item_results(policy, records, params, batch, seed, bar, by_length)
    return np.asarray([it.rewards for it in items], dtype=np.float32).reshape(len(records), params.n)


def _breakdown(records: Sequence[PromptRecord], acc: np.ndarray, key: str) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for rec, a in zip(records, acc, strict=True):
        groups[str(getattr(rec, key))].append(float(a))
    return {g: float(np.mean(v)) for g, v in sorted(groups.items())}


def _evaluated(records: Sequence[PromptRecord], cfg: EvalConfig) -> list[PromptRecord]:
    """The items of a test set that are evaluated (the first ``cfg.max_items``)."""
    return list(records)[: cfg.max_items] if cfg.max_items else list(records)


def check_tests_fit(policy: Policy, tests: dict[str, Sequence[PromptRecord]], cfg: EvalConfig) -> None:
    """Refuse a test prompt that does not fit the model's context with ``eval.max_new_tokens``."""
    for name, records in tests.items():
        policy.check_fit(_evaluated(records, cfg), cfg.max_new_tokens, "eval.max_new_tokens",
                         where=f"tests/{name}")


def evaluate_set(policy: Policy, name: str, records: Sequence[PromptRecord], cfg: EvalConfig,
                 by_length: bool = True) -> dict[str, Any]:
    """Accuracy of one test set per mode, by family and by level (``by_length=False``: prompts
    are batched in file order, the round-1 path)."""
    records = _evaluated(records, cfg)
    res: dict[str, Any] = {"n": len(records)}
    modes = []
    if cfg.greedy:
        modes.append(("greedy", SamplingParams(n=1, greedy=True, max_new_tokens=cfg.max_new_tokens)))
    if cfg.samples > 0:
        modes.append((f"mean@{cfg.samples}", SamplingParams(
            n=cfg.samples, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)))
    for mode, params in modes:
        with track(f"eval {name} {mode}", total=len(records), transient=True) as bar:
            acc = _rewards(policy, records, params, cfg.batch_size,
                           derive_seed(cfg.seed, name, mode), bar, by_length).mean(axis=1)
        res[mode] = float(acc.mean())
        res[f"{mode}_by_family"] = _breakdown(records, acc, "source")
        res[f"{mode}_by_level"] = _breakdown(records, acc, "level")
    return res


def is_targeted(name: str) -> bool:
    return name.startswith("target")


def evaluate(policy: Policy, tests: dict[str, Sequence[PromptRecord]], cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate every test set; ``targeted`` / ``untargeted`` average the sets of each kind.

    Every set's prompts are checked against the model's context before anything is generated.
    """
    check_tests_fit(policy, tests, cfg)
    sets = {name: evaluate_set(policy, name, recs, cfg) for name, recs in tests.items()}
    out: dict[str, Any] = {"sets": sets}
    metric = "greedy" if cfg.greedy else f"mean@{cfg.samples}"
    for kind, pred in (("targeted", True), ("untargeted", False)):
        vals = [s[m] for n, s in sets.items() if is_targeted(n) == pred
                for m in (metric,) if m in s]
        if vals:
            out[kind] = float(np.mean(vals))
    out["metric"] = metric
    return out
