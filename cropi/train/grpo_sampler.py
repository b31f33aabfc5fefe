"""The stage sampler: a seeded permutation of the stage subset, laid out the way TRL expects.

TRL's ``GRPOTrainer`` reads one *generation batch* per dataloader batch and relies on the sampler
to lay out prompt indices like its own ``RepeatSampler``::

    for chunk in chunks_of(order, batch_size):        # batch_size = generation_batch_size // K
        for _ in range(repeat_count):                 # = num_iterations * steps_per_generation
            for index in chunk:
                for _ in range(mini_repeat_count):    # = num_generations (K)
                    yield index

``RepeatSampler`` draws one permutation per epoch and drops the incomplete last chunk. Ours draws
a stream of seeded permutations (each prompt of the subset is used once before any is used
again), cuts it into ``num_chunks`` full chunks and stops: exactly the batches one stage needs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class StageSampler(Sampler[int]):
    """Seeded, cycling prompt order over ``num_samples`` dataset rows, in TRL's repeated layout.

    Args:
        num_samples: rows of the (map-style) stage dataset; indices are ``0..num_samples-1``.
        mini_repeat_count: times each index is repeated in a row (TRL ``num_generations``).
        batch_size: distinct prompts per generation batch (``generation_batch_size // K``).
        repeat_count: times each chunk is repeated (``num_iterations * steps_per_generation``).
        num_chunks: generation batches to yield in total (the stage length).
        seed: seed of the permutation stream; the same seed gives the same order.
    """

    def __init__(self, num_samples: int, mini_repeat_count: int, batch_size: int, repeat_count: int,
                 num_chunks: int, seed: int) -> None:
        if num_samples < 1:
            raise ValueError("the stage subset is empty")
        if min(mini_repeat_count, batch_size, repeat_count, num_chunks) < 1:
            raise ValueError("mini_repeat_count, batch_size, repeat_count and num_chunks must be >= 1")
        self.num_samples = num_samples
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.num_chunks = num_chunks
        self.seed = seed

    def order(self) -> list[int]:
        """The prompt order: ``num_chunks * batch_size`` indices, concatenated seeded permutations."""
        gen = torch.Generator().manual_seed(int(self.seed))
        need = self.num_chunks * self.batch_size
        out: list[int] = []
        while len(out) < need:
            out.extend(torch.randperm(self.num_samples, generator=gen).tolist())
        return out[:need]

    def chunks(self) -> list[list[int]]:
        """The distinct prompts of each generation batch, ``[num_chunks][batch_size]``."""
        order = self.order()
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[int]:
        for chunk in self.chunks():
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        return self.num_chunks * self.batch_size * self.repeat_count * self.mini_repeat_count
