"""Accuracy of a policy on test sets: greedy and mean@k sampled, per family and level.

Next to each accuracy, the share of completions that state the final answer in the strict form
the prompt asks for (:func:`strict_answer`: the last non-empty line is just the answer), so that a
rise in accuracy can be told apart from a rise in answer formatting (docs/acceleration.md#format-vs-skill).
Each set also reports its *majority-answer baseline* (the accuracy of always giving the set's most
common gold answer) and, per mode, the *modal-answer share* (how many items got the answer the
policy gives most often): an accuracy near the baseline with a modal share near 1 is a policy that
collapsed onto one answer, not one that learned to solve.
With ``with_items`` the result also carries one row per test item and mode (reward, strict share,
extracted answer), which the curriculum writes to ``RUN/evals/step_NNNNNN.parquet``
(:func:`write_item_results`) for the paired statistics of ``cropi report``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cropi.config import EvalConfig
from cropi.data.schema import PromptRecord
from cropi.rollout.collect import Policy
from cropi.rollout.sampler import SamplingParams
from cropi.utils.io import atomic_path
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
    strict: list[bool] = field(default_factory=list)

    @property
    def rewards(self) -> list[float]:
        return [v.reward for v in self.verdicts]

    @property
    def extracted(self) -> list[str | None]:
        return [v.extracted for v in self.verdicts]


STRICT_FORMS = {
    "number": re.compile(r"[-+]?\d+(?:\.\d+)?"),
    "fraction": re.compile(r"[-+]?\d+(?:\s*/\s*\d+)?"),
    "word": re.compile(r"[A-Za-z][A-Za-z'-]*"),
}
"""The strict answer forms, by the record's ``meta["answer_format"]`` (built-in suites: number,
fraction, word; other records: number)."""


def strict_answer(text: str, record: PromptRecord) -> bool:
    """True when the completion's last non-empty line is just the answer in the form the prompt
    asks for (one final ``.`` allowed): no lead-in ("Answer:"), no markup, no other words. A
    strict extraction, unlike the verifier's lenient one; it says nothing about correctness."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return False
    last = lines[-1][:-1].rstrip() if lines[-1].endswith(".") else lines[-1]
    form = str((record.meta or {}).get("answer_format", "number"))
    return STRICT_FORMS.get(form, STRICT_FORMS["number"]).fullmatch(last) is not None


def _norm(answer: str | None) -> str | None:
    return None if answer is None else " ".join(str(answer).split()).casefold()


def majority_baseline(records: Sequence[PromptRecord]) -> float:
    """Accuracy of always answering the most common gold answer of ``records`` (golds compared as
    whitespace- and case-normalised strings); NaN for an empty set."""
    golds = Counter(_norm(r.answer) for r in records)
    return golds.most_common(1)[0][1] / len(records) if records else float("nan")


def modal_share(items: Sequence[ItemResult]) -> float:
    """Share of items whose first response's extracted answer is the answer extracted most often
    over the set (items without an extracted answer count as different); 0 when none has one."""
    if not items:
        return float("nan")
    counts = Counter(a for it in items if it.verdicts and (a := _norm(it.extracted[0])) is not None)
    return counts.most_common(1)[0][1] / len(items) if counts else 0.0


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
    prompts go in order of their length (greedy results do not depend on the order; a sampled
    response does, through the chunk's seed), and a sampler that batches continuously
    (``HFSampler.max_rows``) takes them all in one call with ``batch`` rows decoding at a time.
    """
    per = max(1, batch // params.n)
    order = _order(policy, records, by_length)
    sampler = policy.sampler
    continuous = by_length and getattr(sampler, "fast", False) and hasattr(sampler, "max_rows")
    if continuous:
        per = max(1, len(records))
        saved, sampler.max_rows = sampler.max_rows, batch
    out: list[ItemResult | None] = [None] * len(records)
    for c, start in enumerate(range(0, len(order), per)):
        pos = order[start:start + per]
        chunk = [records[i] for i in pos]
        resp = policy.sampler.generate([policy.prompt_ids(r) for r in chunk], params,
                                       derive_seed(seed, c))
        for i, rec, rs in zip(pos, chunk, resp, strict=True):
            texts = [policy.tokenizer.decode(r, skip_special_tokens=True) for r in rs]
            out[i] = ItemResult(rec.id, [verify(t, rec) for t in texts],
                                [strict_answer(t, rec) for t in texts])
        bar.advance(len(chunk), sum(len(r) for rs in resp for r in rs))
    if continuous:
        sampler.max_rows = saved
    return [r for r in out if r is not None]


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


def _greedy_params(cfg: EvalConfig) -> SamplingParams:
    return SamplingParams(n=1, greedy=True, max_new_tokens=cfg.max_new_tokens)


def evaluate_set(policy: Policy, name: str, records: Sequence[PromptRecord], cfg: EvalConfig,
                 by_length: bool = True, with_items: bool = False,
                 greedy_items: Sequence[ItemResult] | None = None) -> dict[str, Any]:
    """Accuracy of one test set per mode, by family and by level, the strict-format share
    (``MODE_format``), the modal-answer share (``MODE_modal_share``) and the set's
    ``majority_baseline``; ``by_length=False``: prompts are batched in file order, the round-1 path.
    ``with_items``: also ``items``, one row per item and mode (:func:`item_rows`).
    ``greedy_items``: the set's greedy verdicts, already decoded (:func:`evaluate` decodes every
    set's greedy answers in one pass)."""
    records = _evaluated(records, cfg)
    res: dict[str, Any] = {"n": len(records), "majority_baseline": majority_baseline(records)}
    modes = []
    if cfg.greedy:
        modes.append(("greedy", _greedy_params(cfg)))
    if cfg.samples > 0:
        modes.append((f"mean@{cfg.samples}", SamplingParams(
            n=cfg.samples, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)))
    rows: list[dict[str, Any]] = []
    for mode, params in modes:
        if mode == "greedy" and greedy_items is not None:
            items = list(greedy_items)
        else:
            with track(f"eval {name} {mode}", total=len(records), transient=True) as bar:
                items = item_results(policy, records, params, cfg.batch_size,
                                     derive_seed(cfg.seed, name, mode), bar, by_length)
        acc = np.asarray([np.mean(it.rewards) for it in items], dtype=np.float64)
        res[mode] = float(acc.mean()) if acc.size else float("nan")
        res[f"{mode}_format"] = float(np.mean([np.mean(it.strict) for it in items])) if items else float("nan")
        res[f"{mode}_modal_share"] = modal_share(items)
        res[f"{mode}_by_family"] = _breakdown(records, acc, "source")
        res[f"{mode}_by_level"] = _breakdown(records, acc, "level")
        if with_items:
            rows += item_rows(name, mode, items)
    if with_items:
        res["items"] = rows
    return res


def item_rows(name: str, mode: str, items: Sequence[ItemResult]) -> list[dict[str, Any]]:
    """One row per item: ``set``, ``id``, ``mode``, ``reward`` (mean over its responses),
    ``strict`` (share of its responses in the strict form), ``answer`` (the first response's
    extracted answer)."""
    return [{"set": name, "id": it.id, "mode": mode, "reward": float(np.mean(it.rewards)),
             "strict": float(np.mean(it.strict)) if it.strict else None,
             "answer": it.extracted[0] if it.verdicts else None} for it in items]


def write_item_results(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write per-item rows (:func:`item_rows`) as one Parquet file, atomically (the reader:
    ``cropi.report.runs.read_item_results``)."""
    columns = {key: [row.get(key) for row in rows]
               for key in ("set", "id", "mode", "reward", "strict", "answer")}
    table = pa.table({"set": pa.array(columns["set"], pa.string()),
                      "id": pa.array(columns["id"], pa.string()),
                      "mode": pa.array(columns["mode"], pa.string()),
                      "reward": pa.array(columns["reward"], pa.float64()),
                      "strict": pa.array(columns["strict"], pa.float64()),
                      "answer": pa.array(columns["answer"], pa.string())})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def greedy_by_set(policy: Policy, tests: dict[str, Sequence[PromptRecord]], cfg: EvalConfig
                  ) -> dict[str, list[ItemResult]]:
    """Every set's greedy verdicts from ONE decoding pass over all their evaluated items: with a
    continuously batching sampler, ``eval.batch_size`` rows decode together across the sets
    instead of each set's few dozen rows thinning out alone. A greedy answer does not depend on
    the pass (no seed), only, through float rounding, on the batch it decodes in."""
    chosen = {name: _evaluated(recs, cfg) for name, recs in tests.items()}
    every = [rec for recs in chosen.values() for rec in recs]
    with track("eval greedy", total=len(every), transient=True) as bar:
        items = item_results(policy, every, _greedy_params(cfg), cfg.batch_size,
                             derive_seed(cfg.seed, "greedy"), bar)
    out: dict[str, list[ItemResult]] = {}
    start = 0
    for name, recs in chosen.items():
        out[name], start = items[start:start + len(recs)], start + len(recs)
    return out


def is_targeted(name: str) -> bool:
    return name.startswith("target")


def evaluate(policy: Policy, tests: dict[str, Sequence[PromptRecord]], cfg: EvalConfig,
             with_items: bool = False) -> dict[str, Any]:
    """Evaluate every test set; ``targeted`` / ``untargeted`` average the sets of each kind, and
    ``targeted_format`` / ``untargeted_format`` their strict-format shares (same metric),
    ``KIND_modal_share`` their modal-answer shares and ``KIND_majority`` their majority-answer
    baselines (set means, like the accuracies).
    ``with_items``: also ``items``, the per-item rows of every set (:func:`item_rows`).

    Every set's prompts are checked against the model's context before anything is generated.
    """
    check_tests_fit(policy, tests, cfg)
    greedy = greedy_by_set(policy, tests, cfg) if cfg.greedy else {}
    sets = {name: evaluate_set(policy, name, recs, cfg, with_items=with_items, greedy_items=greedy.get(name))
            for name, recs in tests.items()}
    items = [row for s in sets.values() for row in s.pop("items", [])]
    out: dict[str, Any] = {"sets": sets}
    metric = "greedy" if cfg.greedy else f"mean@{cfg.samples}"
    for kind, pred in (("targeted", True), ("untargeted", False)):
        chosen = [s for n, s in sets.items() if is_targeted(n) == pred and metric in s]
        if chosen:
            out[kind] = float(np.mean([s[metric] for s in chosen]))
            out[f"{kind}_format"] = float(np.mean([s[f"{metric}_format"] for s in chosen]))
            out[f"{kind}_modal_share"] = float(np.mean([s[f"{metric}_modal_share"] for s in chosen]))
            out[f"{kind}_majority"] = float(np.mean([s["majority_baseline"] for s in chosen]))
    out["metric"] = metric
    if with_items:
        out["items"] = items
    return out
