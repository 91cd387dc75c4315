"""Bin packing: a valid partition, the fewest packs possible on instruction data, and the row layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kubetune.trainer.batch import IGNORE_INDEX
from kubetune.trainer.data.packing import _best_fit_decreasing, build_packs, lower_bound, plan_packs
from tests.support.data import DOLLY


def _check_partition(packs, lengths, capacity):
    flat = sorted(i for p in packs for i in p)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in p) <= capacity for p in packs)


@pytest.fixture(scope="module")
def dolly_lengths(sp_tokenizer):
    """Token counts of the Dolly sample (instruction + context + response), with the real tokenizer."""
    texts = []
    for line in DOLLY.read_text().splitlines():
        r = json.loads(line)
        texts.append(f"[INST] {r['instruction']}\n\n{r['context']} [/INST] {r['response']}</s>")
    return [len(x) for x in sp_tokenizer(texts).input_ids]


@pytest.mark.parametrize("capacity", [2048, 4096])
def test_dolly_sample_reaches_the_lower_bound(dolly_lengths, capacity):
    lengths = [min(n, capacity) for n in dolly_lengths]
    packs = plan_packs(lengths, capacity)
    _check_partition(packs, lengths, capacity)
    assert len(packs) == lower_bound(lengths, capacity)


@pytest.mark.parametrize("capacity", [2048, 4096])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_synthetic_15k_is_at_most_one_pack_above_the_bound(dolly_lengths, capacity, seed):
    """15,000 examples drawn from Dolly's lengths: never worse than BFD, at most one pack over the bound."""
    rng = np.random.default_rng(seed)
    lengths = [int(min(n, capacity)) for n in rng.choice(dolly_lengths, 15_000)]
    bfd, _ = _best_fit_decreasing(lengths, capacity)
    packs = plan_packs(lengths, capacity)
    _check_partition(packs, lengths, capacity)
    assert len(packs) <= len(bfd)
    assert len(packs) <= lower_bound(lengths, capacity) + 1


def test_improvement_step_saves_the_pack_bfd_wastes(dolly_lengths):
    lengths = [int(min(n, 4096)) for n in np.random.default_rng(0).choice(dolly_lengths, 15_000)]
    bfd, _ = _best_fit_decreasing(lengths, 4096)
    packs = plan_packs(lengths, 4096)
    _check_partition(packs, lengths, 4096)
    assert len(bfd) == lower_bound(lengths, 4096) + 1
    assert len(packs) == lower_bound(lengths, 4096)


def test_impossible_bound_keeps_a_valid_packing():
    lengths = [6, 6, 6]  # bound says 2 packs of 10; only 3 are possible
    packs = plan_packs(lengths, 10)
    _check_partition(packs, lengths, 10)
    assert len(packs) == 3


def test_lengths_must_fit():
    with pytest.raises(ValueError, match=r"1\.\.capacity"):
        plan_packs([5, 11], 10)


def test_rows_restart_positions_and_keep_labels():
    ids = [
        np.arange(1, 4, dtype=np.int32),
        np.arange(10, 12, dtype=np.int32),
        np.arange(20, 25, dtype=np.int32),
    ]
    labels = [x.copy() for x in ids]
    for y in labels:
        y[0] = IGNORE_INDEX
    table = build_packs(ids, labels, [[2, 0], [1]])
    rows = table.to_pylist()
    assert table.column_names == ["input_ids", "labels", "position_ids", "seq_lengths"]
    assert rows[0]["input_ids"] == [20, 21, 22, 23, 24, 1, 2, 3]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2]
    assert rows[0]["seq_lengths"] == [5, 3]
    assert rows[0]["labels"] == [IGNORE_INDEX, 21, 22, 23, 24, IGNORE_INDEX, 2, 3]
    assert rows[1] == {
        "input_ids": [10, 11],
        "labels": [IGNORE_INDEX, 11],
        "position_ids": [0, 1],
        "seq_lengths": [2],
    }
