"""Counted work: tokens a phase generated, forwarded and backpropagated.

Seconds depend on what else the machine runs; token counts do not. Every phase that runs the model
logs a ``work`` mapping (:meth:`Work.as_dict`) beside its seconds, so costs can be compared across
runs made under different loads, and turned into FLOPs for a model of N parameters
(:meth:`Work.flops`: about 2N per token of a forward pass, 6N per token of a forward + backward).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class Work:
    """Token counts of one phase (or a sum of phases)."""

    prompts: int = 0
    responses: int = 0
    tokens_generated: int = 0  # response tokens sampled (one decode step each)
    tokens_prefill: int = 0  # prompt tokens the sampler encoded (once per prompt and sampling round)
    tokens_forward: int = 0  # tokens of forward-only passes (teacher-forced log-probs, drift)
    tokens_backward: int = 0  # tokens of forward + backward passes (POPI gradients, GRPO)

    def add(self, other: Work) -> Work:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def __add__(self, other: Work) -> Work:
        return dataclasses.replace(self).add(other)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Work:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in (data or {}).items() if k in names})

    def flops(self, n_params: int) -> float:
        """Approximate FLOPs for a model of ``n_params`` parameters (attention's share ignored:
        responses here are short next to the model's width)."""
        fwd = self.tokens_generated + self.tokens_prefill + self.tokens_forward
        return 2.0 * n_params * fwd + 6.0 * n_params * self.tokens_backward
