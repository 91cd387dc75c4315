"""Which examples (packs, when packing) each process trains on, micro-batch by micro-batch.

The order is a pure function of (seed, epoch, dataset size, world size, batch size), so
a resumed run recomputes it and skips to the saved position instead of storing it.

Per epoch: the indices are shuffled with a generator seeded by seed + epoch; without
packing, they are then sorted by length inside windows of `LENGTH_WINDOW` micro-batches
(padded batches waste little, the order stays random at large). The list is padded to
a multiple of world_size x batch_size by repeating its head (as torch's
DistributedSampler does), cut into micro-batches, and micro-batch i goes to rank
i mod world_size. Every rank thus gets the same number of micro-batches, and one
optimizer step of every rank together covers micro-batches that a single process
with gradient_accumulation x world_size micro-batches would cover: the basis of the
"same gradient whatever the split" property the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LENGTH_WINDOW = 64  # micro-batches sorted together when bucketing by length


@dataclass(frozen=True)
class Schedule:
    """How many steps an epoch and the run have, for a dataset and a batch layout."""

    examples: int
    world_size: int
    batch_size: int
    gradient_accumulation: int

    @property
    def micro_batches_per_rank(self) -> int:
        """Micro-batches each rank trains on per epoch."""
        return math.ceil(self.examples / (self.world_size * self.batch_size))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_rank / self.gradient_accumulation)

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        if max_steps is not None:
            return max_steps
        return max(1, math.ceil(epochs * self.steps_per_epoch))

    def step_micro_batches(self, step_in_epoch: int) -> int:
        """Micro-batches in a step: gradient_accumulation, fewer in an epoch's last step."""
        start = step_in_epoch * self.gradient_accumulation
        return min(self.gradient_accumulation, self.micro_batches_per_rank - start)


def epoch_micro_batches(
    schedule: Schedule,
    rank: int,
    epoch: int,
    seed: int,
    lengths: Sequence[int] | None = None,
) -> list[list[int]]:
    """This rank's micro-batches (lists of example indices) for one epoch, in order.

    `lengths` (tokens per example) turns on length bucketing, for padded batches.
    """
    n, world, size = schedule.examples, schedule.world_size, schedule.batch_size
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if lengths is not None:
        window = LENGTH_WINDOW * size * world
        lengths_array = np.asarray(lengths)
        chunks = [order[i : i + window] for i in range(0, n, window)]
        # Longest first inside each window (stable for equal lengths, so deterministic).
        order = np.concatenate([c[np.argsort(-lengths_array[c], kind="stable")] for c in chunks])
    per_round = world * size
    padded_length = math.ceil(n / per_round) * per_round
    if padded_length > n:
        order = np.concatenate([order, np.resize(order, padded_length - n)])
    batches = [order[i : i + size].tolist() for i in range(0, padded_length, size)]
    return batches[rank::world]
