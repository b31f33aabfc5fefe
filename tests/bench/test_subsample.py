"""What-if cuts of stored rollouts: the first k responses, adaptive K's stopping rule."""

from __future__ import annotations

from cropi.bench.subsample import cut_row


def _row(rewards):
    n = len(rewards)
    return {"response_ids": [[i] * (i + 1) for i in range(n)], "response_text": [str(i) for i in range(n)],
            "rewards": list(rewards), "logprobs": [[-1.0] * (i + 1) for i in range(n)],
            "pass_rate": sum(rewards) / n, "n_tokens": sum(range(1, n + 1)), "sampling": None}


def test_cut_keeps_the_first_k_and_recounts():
    out = _row([1, 0, 1, 1, 0, 0, 1, 0])
    cut = cut_row(out, 4)
    assert cut["rewards"] == [1, 0, 1, 1] and cut["response_ids"] == out["response_ids"][:4]
    assert cut["pass_rate"] == 0.75 and cut["n_tokens"] == 1 + 2 + 3 + 4 and cut["sampling"] == "all"


def test_adaptive_cut_stops_on_equal_rewards_and_never_drops_a_mixed_prompt():
    stopped = cut_row(_row([0, 0, 1, 0, 0, 0, 0, 0]), 8, k_first=2)
    assert stopped["sampling"] == "stopped" and stopped["rewards"] == [0, 0]  # its gradient is lost
    mixed = cut_row(_row([0, 1, 0, 0, 0, 0, 0, 0]), 8, k_first=2)
    assert mixed["sampling"] == "extended" and len(mixed["rewards"]) == 8
    assert cut_row(_row([1] * 8), 8, k_first=4)["rewards"] == [1] * 4
