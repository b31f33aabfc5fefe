"""The benchmarks' timed rollout and evaluation calls on a tiny random model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from cropi.bench.timing import timed_eval, timed_rollout
from cropi.config import RolloutConfig
from cropi.data.schema import PromptRecord


def _rec(i: int, text: str, answer: str) -> PromptRecord:
    return PromptRecord(id=f"q{i}", prompt=[{"role": "user", "content": text}], answer=answer,
                        source="add", meta={"verifier": "numeric"})


RECORDS = [_rec(i, f"What is {i}+{i}{' and then some more words' * (i % 3)}?", str(2 * i)) for i in range(6)]


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path):
    from cropi.model.loading import load_model, load_tokenizer
    from cropi.rollout.collect import make_policy

    model = load_model(str(tiny_model_dir), "fp32").eval()
    return make_policy(model, load_tokenizer(str(tiny_model_dir)), RolloutConfig(dtype="fp32"))


def test_timed_rollout_counts_what_it_sampled(policy) -> None:
    cfg = RolloutConfig(dtype="fp32", k_pool=4, k_first=None, max_new_tokens=8)
    a = timed_rollout(policy, RECORDS[:3], 4, cfg, 5)
    assert a["sequences"] == 12 and 12 <= a["tokens"] <= 12 * 8
    assert a["tokens_per_s"] == pytest.approx(a["tokens"] / a["seconds"])
    b = timed_rollout(policy, RECORDS[:3], 4, cfg, 5)
    assert (b["tokens"], b["mean_pass_rate"]) == (a["tokens"], a["mean_pass_rate"])  # seeded per call


def test_timed_eval_verdicts_do_not_depend_on_batch_order(policy, monkeypatch) -> None:
    import cropi.evaluation

    # a random model answers nothing right: a verdict from the text itself (its length's parity)
    monkeypatch.setattr(cropi.evaluation, "verify",
                        lambda text, rec: SimpleNamespace(reward=float(len(text) % 2)))
    tests = {"t/a": RECORDS[:4], "t/b": RECORDS[4:]}
    by_length = timed_eval(policy, tests, by_length=True)
    in_order = timed_eval(policy, tests, by_length=False)
    assert list(by_length["verdicts"]) == [f"t/a/q{i}" for i in range(4)] + ["t/b/q4", "t/b/q5"]
    assert by_length["verdicts"] == in_order["verdicts"]
    assert 0 < sum(by_length["verdicts"].values()) < 6  # the texts differ: the comparison can fail
    assert by_length["items"] == 6
    assert by_length["accuracy"] == pytest.approx(sum(by_length["verdicts"].values()) / 6)
