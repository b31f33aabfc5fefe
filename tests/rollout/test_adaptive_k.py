"""Adaptive K (``rollout.k_first``): hand-made reward streams, a sampler that records its calls."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cropi.config import RolloutConfig
from cropi.rollout.collect import sample_group
from cropi.rollout.sampler import Scored
from cropi.utils.work import Work


class Recorder:
    """Response j of prompt p in call c is the token list [p, c, j]."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[int]], int, int]] = []

    def generate(self, prompts, params, seed):
        c = len(self.calls)
        self.calls.append((prompts, params.n, seed))
        return [[[p[0], c, j] for j in range(params.n)] for p in prompts]

    def generate_scored(self, prompts, params, seed):  # log-prob -(call + 1) per token; embedding: call
        out = self.generate(prompts, params, seed)
        c = len(self.calls)
        return Scored(out, [[[-float(c)] * len(r) for r in rs] for rs in out], np.full((len(prompts), 2), c))


def _run(streams: dict[int, list[float]], k: int, k_first: int | None, scored: bool = False):
    sampler = Recorder()
    policy = SimpleNamespace(sampler=sampler)
    seen: dict[int, int] = {}

    def reward(i: int, response: list[int]) -> float:  # the i-th prompt's rewards, in sampling order
        n = seen.get(i, 0)
        seen[i] = n + 1
        return streams[i][n]

    prompts = [[i] for i in range(len(streams))]
    out, why, lps, emb = sample_group(policy, prompts, k, RolloutConfig(k_pool=k, k_first=k_first), 7, reward,
                                      scored=scored)
    assert (lps is None) == (emb is None) == (not scored)
    return (out, why, sampler.calls) + ((lps, emb) if scored else ())


def test_stops_all_equal_and_extends_mixed() -> None:
    streams = {0: [0, 0, 0], 1: [0, 1, 0], 2: [1, 1, 1], 3: [1, 0, 1]}
    out, why, calls = _run(streams, k=8, k_first=3)
    assert why == ["stopped", "extended", "stopped", "extended"]
    assert [len(r) for r in out] == [3, 8, 3, 8]
    assert [n for _, n, _ in calls] == [3, 5]
    assert calls[1][0] == [[1], [3]]  # only the open prompts get more
    assert calls[1][2] != calls[0][2]  # the extension is another draw
    assert out[1][:3] == [[1, 0, 0], [1, 0, 1], [1, 0, 2]] and out[1][3:] == [[1, 1, j] for j in range(5)]


def test_logprobs_from_the_sampling_follow_their_responses() -> None:
    streams = {0: [0, 0, 0], 1: [0, 1, 0], 2: [1, 0, 1]}
    out, why, calls, lps, emb = _run(streams, k=5, k_first=3, scored=True)
    assert emb.tolist() == [[1, 1]] * 3  # every prompt's from the first call (the extension repeats it)
    assert [[len(x) for x in lp] for lp in lps] == [[len(r) for r in rs] for rs in out]
    assert [lp[0] for lp in lps[0]] == [-1.0] * 3  # stopped: the first call's only
    assert [lp[0] for lp in lps[1]] == [-1.0] * 3 + [-2.0] * 2  # extended: then the second call's


def test_a_prompt_with_mixed_rewards_is_never_dropped() -> None:
    streams = {i: [float(j == i % 4) for j in range(4)] for i in range(8)}  # one success each: mixed
    out, why, calls = _run(streams, k=6, k_first=4)
    assert why == ["extended"] * 8 and all(len(r) == 6 for r in out)


def test_nothing_open_means_one_round() -> None:
    out, why, calls = _run({0: [0, 0], 1: [1, 1]}, k=8, k_first=2)
    assert why == ["stopped", "stopped"] and len(calls) == 1


@pytest.mark.parametrize("k_first", [None, 8, 12])
def test_without_adaptive_k_every_prompt_gets_k_in_one_call(k_first) -> None:
    out, why, calls = _run({0: [], 1: []}, k=8, k_first=k_first)  # rewards are not even asked for
    assert why == ["all", "all"] and [len(r) for r in out] == [8, 8]
    assert [(n, s) for _, n, s in calls] == [(8, 7)]


def test_k_first_below_two_is_refused() -> None:
    from cropi.utils.errors import CropiError

    with pytest.raises(CropiError, match="rollout.k_first"):
        RolloutConfig(k_first=1)


def test_work_adds_and_counts_flops() -> None:
    w = Work(prompts=1, tokens_generated=10, tokens_forward=5) + Work(prompts=2, tokens_backward=4)
    assert w.as_dict() == {"prompts": 3, "responses": 0, "tokens_generated": 10, "tokens_prefill": 0,
                           "tokens_forward": 5, "tokens_backward": 4}
    assert w.flops(100) == 2 * 100 * 15 + 6 * 100 * 4
    assert Work.from_dict({**w.as_dict(), "other": 1}) == w
