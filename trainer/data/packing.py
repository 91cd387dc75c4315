"""Bin packing: examples into as few `maxSeqLength` sequences as possible.

`plan_packs(lengths, capacity)` returns which examples go in which pack. It runs
best-fit decreasing (BFD: longest example first, each into the pack it fills most
tightly) and then, while the number of packs is above the lower bound
ceil(total tokens / capacity), tries to empty the least-filled pack by spreading its
examples over the others, trading examples between packs and the free set so that
packs fill up exactly (see `_empty_one_pack`). Every trade shrinks the free set by at
least one token, so the step ends; if it gets stuck the packing before it is kept. Why not a
library: the maintained ones (`binpacking`, `prtpy`) offer first-fit/BFD-style greedy
heuristics, which is what BFD already is, or exact solvers too slow for tens of
thousands of items; TRL's `pack_dataset` is BFD applied to each batch of 1,000
examples separately, which leaves a part-filled pack per batch. BFD is within 11/9
of optimal in the worst case; on instruction data, with many short examples to fill
gaps, BFD plus this step reaches the lower bound or one pack above it where the bound
leaves almost no slack (see docs/benchmarks.md).

`build_packs` then lays the packed rows out in Arrow: `input_ids`, `labels`,
`position_ids` (restarting at 0 for every example) and `seq_lengths`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

# Passes over all packs the improvement step makes per pack it tries to empty.
IMPROVE_PASSES = 50
# The most packs emptied together in one attempt to save a pack.
MAX_EMPTIED = 3


def lower_bound(lengths: Sequence[int], capacity: int) -> int:
    """The fewest packs any packing can use: ceil(total tokens / capacity)."""
    return math.ceil(sum(lengths) / capacity) if len(lengths) else 0


def plan_packs(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of the examples in each pack (every length must be <= capacity)."""
    if any(n > capacity or n <= 0 for n in lengths):
        raise ValueError(
            "every example must have 1..capacity tokens; truncate or drop the others first"
        )
    packs, loads = _best_fit_decreasing(lengths, capacity)
    bound = lower_bound(lengths, capacity)
    while len(packs) > bound and _empty_one_pack(packs, loads, lengths, capacity):
        pass
    return packs


def _best_fit_decreasing(
    lengths: Sequence[int], capacity: int
) -> tuple[list[list[int]], list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    loads: list[int] = []
    free: list[
        tuple[int, int]
    ] = []  # (room left, pack) sorted: the best fit is the first with room >= n
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, p = free.pop(at)
        else:
            p, room = len(packs), capacity
            packs.append([])
            loads.append(0)
        packs[p].append(i)
        loads[p] += n
        if room - n > 0:
            bisect.insort(free, (room - n, p))
    return packs, loads


def _empty_one_pack(
    packs: list[list[int]], loads: list[int], lengths: Sequence[int], capacity: int
) -> bool:
    """Try to use one pack fewer; True if it worked (packs changed in place).

    The k least-filled packs (k = 1, 2, 3 in turn: more free examples give more ways to
    trade) are emptied and their examples become "free". Free examples go where they
    fit (best fit); then each pack with room left is refilled from its own and the
    free examples by an exact subset sum, when that fills it more: the pack fills up
    and the free set shrinks (Falkenauer's dominance-based exchange, as used in the
    local search of Levine & Ducatelle, 2004, generalised from 2-for-2 swaps to any subset). It worked once what is still
    free fits into k - 1 packs; if a pass changes nothing, the packs are left as they were.
    """
    by_load = sorted(range(len(packs)), key=lambda p: (loads[p], p))
    for k in range(1, min(MAX_EMPTIED, len(packs)) + 1):
        emptied = set(by_load[:k])
        rest = [list(p) for i, p in enumerate(packs) if i not in emptied]
        rest_loads = [load for i, load in enumerate(loads) if i not in emptied]
        free = [item for i in by_load[:k] for item in packs[i]]
        for _ in range(IMPROVE_PASSES):
            free = _place_free(free, rest, rest_loads, lengths, capacity)
            if sum(lengths[i] for i in free) <= (k - 1) * capacity:
                refill, refill_loads = _best_fit_decreasing([lengths[i] for i in free], capacity)
                if len(refill) <= k - 1:
                    packs[:] = rest + [[free[j] for j in pack] for pack in refill]
                    loads[:] = rest_loads + refill_loads
                    return True
            if not _trade_pass(free, rest, rest_loads, lengths, capacity):
                break
    return False


def _trade_pass(
    free: list[int], packs: list[list[int]], loads: list[int], lengths: Sequence[int], capacity: int
) -> bool:
    """One pass over the packs with room: refill each from itself plus the free examples.

    For a pack X, the subset of X's and the free examples that fills X best (exact
    subset sum by dynamic programming over token counts) becomes X; the rest is free.
    Done only when X gets fuller, so the free set shrinks. True if any pack changed.
    """
    changed = False
    for p in range(len(packs)):
        if loads[p] >= capacity or not free:
            continue
        pool = packs[p] + free
        chosen = _best_subset([lengths[i] for i in pool], capacity)
        total = sum(lengths[pool[j]] for j in chosen)
        if total > loads[p]:
            keep = set(chosen)
            packs[p] = [pool[j] for j in chosen]
            free[:] = [pool[j] for j in range(len(pool)) if j not in keep]
            loads[p] = total
            changed = True
    return changed


def _best_subset(sizes: Sequence[int], capacity: int) -> list[int]:
    """Indices of a subset of `sizes` with the largest sum <= capacity (bitset dynamic programming)."""
    reachable = np.zeros(capacity + 1, dtype=bool)
    reachable[0] = True
    history = []
    for size in sizes:
        history.append(reachable)
        reachable = reachable.copy()
        if size <= capacity:
            reachable[size:] |= history[-1][: capacity + 1 - size]
    total = int(np.flatnonzero(reachable)[-1])
    chosen = []
    for j in range(len(sizes) - 1, -1, -1):
        if not history[j][total]:  # not reachable without item j: it is in the subset
            chosen.append(j)
            total -= sizes[j]
    return chosen[::-1]


def _place_free(
    free: list[int], packs: list[list[int]], loads: list[int], lengths: Sequence[int], capacity: int
) -> list[int]:
    """Best-fit the free examples (longest first) into packs with room; return those left over."""
    rooms = sorted((capacity - load, p) for p, load in enumerate(loads) if load < capacity)
    left = []
    for item in sorted(free, key=lambda i: (-lengths[i], i)):
        n = lengths[item]
        at = bisect.bisect_left(rooms, (n, -1))
        if at == len(rooms):
            left.append(item)
            continue
        room, p = rooms.pop(at)
        packs[p].append(item)
        loads[p] += n
        if room > n:
            bisect.insort(rooms, (room - n, p))
    return left


def build_packs(
    input_ids: Sequence[np.ndarray], labels: Sequence[np.ndarray], packs: Sequence[Sequence[int]]
) -> pa.Table:
    """The packed rows as an Arrow table (int32 lists), one row per pack, in the order given."""
    import pyarrow as pa

    order = np.fromiter((i for pack in packs for i in pack), dtype=np.int64)
    lengths = np.fromiter((len(x) for x in input_ids), dtype=np.int64, count=len(input_ids))[order]
    ids = np.concatenate([input_ids[i] for i in order]) if len(order) else np.zeros(0, np.int32)
    labs = np.concatenate([labels[i] for i in order]) if len(order) else np.zeros(0, np.int32)
    # Position ids restart at every example: 0..len-1 for each, concatenated.
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = (np.arange(len(ids), dtype=np.int64) - starts).astype(np.int32)
    per_pack = np.fromiter((len(p) for p in packs), dtype=np.int64, count=len(packs))
    example_offsets = np.concatenate([[0], np.cumsum(per_pack)]).astype(np.int32)
    token_offsets = np.concatenate([[0], np.cumsum(lengths)])[example_offsets].astype(np.int32)

    def lists(values: np.ndarray, offsets: np.ndarray) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))

    return pa.table(
        {
            "input_ids": lists(ids.astype(np.int32), token_offsets),
            "labels": lists(labs.astype(np.int32), token_offsets),
            "position_ids": lists(positions, token_offsets),
            "seq_lengths": lists(lengths.astype(np.int32), example_offsets),
        }
    )
