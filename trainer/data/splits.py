"""Held-out splits by fraction: deterministic by seed, stratified by a category.

`split_indices(groups, fractions, seed)` assigns every example to train or to one of
the held-out splits. Within each group (Dolly's `category`, or `dataset.stratifyBy`)
examples are shuffled by the seed; each split gets its share of every group, with
counts rounded by largest remainder so that the totals are exactly
round(fraction x examples) and each group keeps its proportion as closely as integers
allow. The same data, fractions and seed always give the same split.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def split_indices(
    groups: Sequence[str | None], fractions: dict[str, float], seed: int
) -> dict[str, list[int]]:
    """{"train": [...], name: [...] for each held-out split}, indices sorted."""
    n = len(groups)
    members: dict[str | None, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    keys = sorted(members, key=lambda g: (g is None, "" if g is None else g))
    rng = np.random.default_rng(seed)
    for g in keys:
        order = rng.permutation(len(members[g]))
        members[g] = [members[g][j] for j in order]
    out: dict[str, list[int]] = {name: [] for name in fractions}
    taken = dict.fromkeys(keys, 0)
    for name, fraction in fractions.items():
        target = round(fraction * n)
        counts = _largest_remainder({g: fraction * len(members[g]) for g in keys}, target)
        for g in keys:
            count = min(counts[g], len(members[g]) - taken[g])
            out[name] += members[g][taken[g] : taken[g] + count]
            taken[g] += count
    out["train"] = [i for g in keys for i in members[g][taken[g] :]]
    return {name: sorted(indices) for name, indices in out.items()}


def _largest_remainder(shares: dict[str | None, float], total: int) -> dict[str | None, int]:
    counts = {g: math.floor(s) for g, s in shares.items()}
    left = total - sum(counts.values())
    by_remainder = sorted(shares, key=lambda g: (-(shares[g] - counts[g]), "" if g is None else g))
    for g in by_remainder[: max(left, 0)]:
        counts[g] += 1
    return counts
