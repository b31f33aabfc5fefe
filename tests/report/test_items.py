"""Per-item results (RUN/evals/step_NNNNNN.parquet) feed the paired item-level bootstrap; a run
without them makes the comparison fall back to seeds only, and the report says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cropi.report.runs import load_comparison, read_item_results
from cropi.report.stats import bootstrap, comparison_panel

SETS = {"targeted/chain": 4, "targeted/gcd": 2, "untargeted/add": 3}
STEPS = (0, 10, 20)


def _write(run: Path, rewards: dict[int, dict[str, list[float]]]) -> None:
    run.mkdir(parents=True)
    events = []
    for step, per_set in rewards.items():
        rows = [(s, f"{s.split('/')[1]}{i}", "greedy", r) for s, rs in per_set.items()
                for i, r in enumerate(rs)]
        (run / "evals").mkdir(exist_ok=True)
        pq.write_table(pa.table({"set": [r[0] for r in rows], "id": [r[1] for r in rows],
                                 "mode": [r[2] for r in rows], "reward": [r[3] for r in rows]}),
                       run / "evals" / f"step_{step:06d}.parquet")
        targeted = np.mean([np.mean(v) for s, v in per_set.items() if s.startswith("target")])
        events.append({"event": "eval", "stage": -1 if step == 0 else 0, "step": step,
                       "targeted": float(targeted), "metric": "greedy"})
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def _rewards(rng: np.random.Generator, p: float) -> dict[int, dict[str, list[float]]]:
    return {step: {s: (rng.random(n) < p + 0.01 * step).astype(float).tolist()
                   for s, n in SETS.items()} for step in STEPS}


def _comparison(tmp_path: Path, drop: bool = False) -> Path:
    rng = np.random.default_rng(0)
    cmp = tmp_path / "cmp"
    for arm, p in (("full", 0.3), ("cropi", 0.4)):
        for seed in (0, 1, 2):
            _write(cmp / "arms" / arm / f"seed_{seed}", _rewards(rng, p))
    if drop:
        (cmp / "arms" / "cropi" / "seed_1" / "evals" / "step_000010.parquet").unlink()
    (cmp / "compare.json").write_text(json.dumps({"arms": ["cropi", "full"], "baseline": "full"}))
    return cmp


def test_items_enter_the_panel(tmp_path: Path) -> None:
    cmp = _comparison(tmp_path)
    assert sorted(read_item_results(cmp / "arms" / "full" / "seed_0")) == list(STEPS)
    panel = comparison_panel(load_comparison(cmp))
    assert panel is not None and panel.items and panel.arms == ["full", "cropi"]
    assert panel.values.shape == (2, 3, 3, 6)  # untargeted items left out
    assert "per-item" not in panel.note  # the item accuracies agree with the eval events
    assert panel.item_ids[0] == "targeted/chain/chain0"
    boot = bootstrap(panel, "full", n_boot=200)
    assert boot["resampled"] == "seeds and items" and boot["n_items"] == 6


def test_missing_items_fall_back_to_seeds(tmp_path: Path) -> None:
    panel = comparison_panel(load_comparison(_comparison(tmp_path, drop=True)))
    assert panel is not None and not panel.items and panel.values.shape[-1] == 1
    assert "per-item results missing for cropi seed 1" in panel.note
    assert bootstrap(panel, "full", n_boot=50)["resampled"] == "seeds only"


def test_unfinished_runs_and_lonely_arms_are_left_out(tmp_path: Path) -> None:
    cmp = _comparison(tmp_path)
    rng = np.random.default_rng(1)
    short = _rewards(rng, 0.5)
    del short[20]  # still running: evaluated up to step 10
    _write(cmp / "arms" / "cropi" / "seed_3", short)
    _write(cmp / "arms" / "random" / "seed_9", _rewards(rng, 0.5))  # no seed shared with full
    panel = comparison_panel(load_comparison(cmp))
    assert panel is not None and panel.arms == ["full", "cropi"] and panel.seeds == [0, 1, 2]
    assert panel.steps.tolist() == list(STEPS)
    assert "cropi seed 3" in panel.note and "(random)" in panel.note


# --- the writer: per-item rows and strict-format shares from cropi.evaluation ---


class _FakePolicy:
    """Answers item k with COMPLETIONS[k] (token ids = [k]); greedy and sampled alike."""

    COMPLETIONS = ["4", "The answer is 4", "Answer: 5\n", "7.", "", "x\n\n  9  "]

    def __init__(self) -> None:
        self.sampler = self
        self.tokenizer = self

    def prompt_ids(self, record):  # noqa: ANN001, ANN201
        return [int(record.id[1:])]

    def check_fit(self, *args, **kw) -> None:  # noqa: ANN002, ANN003
        pass

    def generate(self, prompts, params, seed):  # noqa: ANN001, ANN201
        return [[list(p)] * params.n for p in prompts]

    def decode(self, ids, skip_special_tokens=True):  # noqa: ANN001, ANN201
        return self.COMPLETIONS[ids[0]]


def test_evaluation_writes_items_and_format_shares(tmp_path: Path) -> None:
    from cropi.config import EvalConfig
    from cropi.data.schema import validate_record
    from cropi.evaluation import evaluate, strict_answer, write_item_results

    records = [validate_record({"id": f"q{k}", "prompt": "2+2?", "answer": "4" if k < 3 else "9",
                                "source": "add", "meta": {"verifier": "numeric"}})
               for k in range(6)]
    # strict: "4", "7." and "... 9  " (last non-empty line just a number); lenient verdicts
    assert [strict_answer(c, records[0]) for c in _FakePolicy.COMPLETIONS] == [
        True, False, False, True, False, True]
    word = validate_record({"id": "w", "prompt": "p", "answer": "yes", "source": "s",
                            "meta": {"verifier": "numeric", "answer_format": "word"}})
    assert strict_answer("Yes.", word) and not strict_answer("It is yes", word)
    tests = {"targeted/add": records[:3], "untargeted/add": records[3:]}
    res = evaluate(_FakePolicy(), tests, EvalConfig(samples=2, max_new_tokens=4), with_items=True)
    # lenient verdicts: "4", "The answer is 4" right, "Answer: 5" wrong; "9" right of the others
    assert res["targeted"] == res["sets"]["targeted/add"]["greedy"] == 2 / 3
    assert res["untargeted"] == 1 / 3
    assert res["targeted_format"] == 1 / 3 and res["untargeted_format"] == 2 / 3
    assert res["sets"]["targeted/add"]["mean@2_format"] == 1 / 3
    assert len(res["items"]) == 12 and "items" not in res["sets"]["targeted/add"]
    assert "items" not in evaluate(_FakePolicy(), tests, EvalConfig(samples=0, max_new_tokens=4))
    run = tmp_path / "run"
    write_item_results(run / "evals" / "step_000010.parquet", res["items"])
    cols = read_item_results(run)[10]
    assert cols["id"][:3] == ["q0", "q1", "q2"] and cols["answer"][:3] == ["4", "4", "5"]
    assert cols["strict"][:3] == [1.0, 0.0, 0.0] and set(cols["mode"]) == {"greedy", "mean@2"}


def test_majority_baseline_and_modal_share() -> None:
    """The set's majority-answer baseline from its golds; the modal-answer share from the answers
    the policy gave (items without an answer never count as modal)."""
    from cropi.config import EvalConfig
    from cropi.data.schema import validate_record
    from cropi.evaluation import evaluate, majority_baseline, modal_share

    golds = ["4", "4", " 4 ", "9", "Yes", "yes"]
    records = [validate_record({"id": f"q{k}", "prompt": "p", "answer": g, "source": "add",
                                "meta": {"verifier": "math"}}) for k, g in enumerate(golds)]
    assert majority_baseline(records) == 3 / 6
    assert majority_baseline(records[3:]) == 2 / 3  # "Yes" and "yes" are one answer
    assert np.isnan(majority_baseline([])) and np.isnan(modal_share([]))
    # _FakePolicy extracts 4, 4, 5, 7, none, 9: the mode "4" covers 2 of 6 items
    res = evaluate(_FakePolicy(), {"targeted/add": records[:3], "untargeted/add": records[3:]},
                   EvalConfig(samples=0, max_new_tokens=4))
    assert res["sets"]["targeted/add"]["greedy_modal_share"] == 2 / 3  # 4, 4, 5
    assert res["sets"]["untargeted/add"]["greedy_modal_share"] == 1 / 3  # 7, none, 9
    assert res["targeted_majority"] == 1.0 and res["untargeted_majority"] == 2 / 3
    assert res["targeted_modal_share"] == 2 / 3


def test_greedy_answers_of_every_set_come_from_one_pass() -> None:
    """With a continuously batching sampler, evaluate() decodes every set's greedy answers in one
    call (rows of all sets share the batch) and gives each set the verdicts it gets alone."""
    from cropi.config import EvalConfig
    from cropi.data.schema import validate_record
    from cropi.evaluation import evaluate, evaluate_set

    class Continuous(_FakePolicy):
        fast, max_rows = True, 0

        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[int, int]] = []

        def generate(self, prompts, params, seed):  # noqa: ANN001, ANN201
            self.calls.append((len(prompts), self.max_rows))
            return super().generate(prompts, params, seed)

    records = [validate_record({"id": f"q{k}", "prompt": "p" * (6 - k), "answer": "4" if k % 2 else "9",
                                "source": "add", "meta": {"verifier": "numeric"}}) for k in range(6)]
    tests = {"targeted/a": records[:2], "untargeted/b": records[2:5], "untargeted/c": records[5:]}
    cfg = EvalConfig(samples=0, max_new_tokens=4, batch_size=4)
    policy = Continuous()
    res = evaluate(policy, tests, cfg, with_items=True)
    assert policy.calls == [(6, 4)] and policy.max_rows == 0  # one pass, batch_size rows at a time
    for name, recs in tests.items():
        alone = evaluate_set(Continuous(), name, recs, cfg, with_items=True)
        assert res["sets"][name] == {k: v for k, v in alone.items() if k != "items"}
        assert [r for r in res["items"] if r["set"] == name] == alone["items"]
