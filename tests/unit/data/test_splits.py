"""Held-out splits: exact sizes, stratified, deterministic by seed."""

from __future__ import annotations

from collections import Counter

from kubetune.trainer.data.splits import split_indices


def test_sizes_are_exact_and_strata_keep_their_share():
    groups = ["a"] * 600 + ["b"] * 300 + ["c"] * 100
    chosen = split_indices(groups, {"validation": 0.1, "test": 0.05}, seed=7)
    assert (
        len(chosen["validation"]) == 100
        and len(chosen["test"]) == 50
        and len(chosen["train"]) == 850
    )
    assert Counter(groups[i] for i in chosen["validation"]) == {"a": 60, "b": 30, "c": 10}
    assert sorted(i for s in chosen.values() for i in s) == list(range(1000))


def test_same_seed_same_split_other_seed_other_split():
    groups = [str(i % 3) for i in range(300)]
    first = split_indices(groups, {"validation": 0.1}, seed=1)
    assert split_indices(groups, {"validation": 0.1}, seed=1) == first
    assert split_indices(groups, {"validation": 0.1}, seed=2) != first


def test_small_strata_round_by_largest_remainder():
    groups = ["a"] * 7 + ["b"] * 7 + ["c"] * 6 + [None] * 3  # None: records without a category
    chosen = split_indices(groups, {"validation": 0.2}, seed=0)
    assert len(chosen["validation"]) == round(0.2 * 23)
