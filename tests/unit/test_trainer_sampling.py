"""The data order: deterministic, resumable, the same split across ranks and micro-batches."""

from __future__ import annotations

from kubetune.trainer.sampling import Schedule, epoch_micro_batches


def test_steps_per_epoch_and_total_steps() -> None:
    schedule = Schedule(examples=10, world_size=2, batch_size=2, gradient_accumulation=2)
    assert schedule.micro_batches_per_rank == 3  # 10 examples → 12 slots over 2 ranks x 2
    assert schedule.steps_per_epoch == 2
    assert [schedule.step_micro_batches(i) for i in range(2)] == [2, 1]
    assert schedule.total_steps(epochs=1.5, max_steps=None) == 3
    assert schedule.total_steps(epochs=3, max_steps=5) == 5


def test_each_epoch_covers_every_example_once_padded_by_repeats() -> None:
    schedule = Schedule(examples=10, world_size=2, batch_size=2, gradient_accumulation=1)
    ranks = [epoch_micro_batches(schedule, rank, epoch=0, seed=1) for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    flat = [i for rank in ranks for batch in rank for i in batch]
    assert set(flat) == set(range(10)) and len(flat) == 12


def test_the_order_depends_on_seed_and_epoch_only() -> None:
    schedule = Schedule(examples=50, world_size=1, batch_size=4, gradient_accumulation=1)
    first = epoch_micro_batches(schedule, 0, epoch=0, seed=1)
    assert first == epoch_micro_batches(schedule, 0, epoch=0, seed=1)
    assert first != epoch_micro_batches(schedule, 0, epoch=1, seed=1)
    assert first != epoch_micro_batches(schedule, 0, epoch=0, seed=2)


def test_two_ranks_see_what_one_process_with_twice_the_accumulation_sees() -> None:
    one = Schedule(examples=16, world_size=1, batch_size=1, gradient_accumulation=4)
    two = Schedule(examples=16, world_size=2, batch_size=1, gradient_accumulation=2)
    single = epoch_micro_batches(one, 0, 0, seed=5)
    per_rank = [epoch_micro_batches(two, rank, 0, seed=5) for rank in range(2)]
    for step in range(one.steps_per_epoch):
        alone = {i for batch in single[step * 4 : step * 4 + 4] for i in batch}
        together = {
            i for rank in per_rank for batch in rank[step * 2 : step * 2 + 2] for i in batch
        }
        assert alone == together


def test_length_bucketing_puts_similar_lengths_together() -> None:
    lengths = [5, 100, 7, 98, 6, 99, 8, 97] * 4
    schedule = Schedule(examples=len(lengths), world_size=1, batch_size=4, gradient_accumulation=1)
    batches = epoch_micro_batches(schedule, 0, 0, seed=0, lengths=lengths)
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert max(spreads) <= 3
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
