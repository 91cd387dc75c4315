"""What `auto` chooses: epochs, sequences per step, learning rate (kubetune/trainer/auto.py)."""

from __future__ import annotations

import pytest

from kubetune.api.v1alpha1 import TrainingSpec
from kubetune.trainer.auto import auto_epochs, resolve, sequences_per_step


@pytest.mark.parametrize(
    ("examples", "epochs"),
    [
        (1, 25.0),
        (3, 25.0),
        (17, 6.0),
        (33, 4.0),
        (34, 3.0),
        (1000, 3.0),
        (8333, 3.0),
        (10000, 2.5),
        (100000, 1.0),
    ],
)
def test_auto_epochs_follow_the_documented_rule(examples: int, epochs: float) -> None:
    assert auto_epochs(examples) == epochs


@pytest.mark.parametrize(
    ("rows", "per_step"),
    [(1, 1), (17, 1), (31, 1), (32, 2), (63, 2), (64, 4), (128, 8), (10**6, 8)],
)
def test_sequences_per_step_leave_at_least_16_steps_an_epoch_and_at_most_8(
    rows: int, per_step: int
) -> None:
    assert sequences_per_step(rows) == per_step
    assert rows // per_step >= 16 or per_step == 1


def test_auto_in_both_batch_fields_is_one_sequence_times_the_steps_share() -> None:
    resolved = resolve(TrainingSpec(), "qlora", examples=17, rows=17)
    training = resolved.training
    assert (training.epochs, training.learning_rate) == (6.0, 2e-4)
    assert (training.batch_size, training.gradient_accumulation) == (1, 1)
    assert resolved.chosen == {
        "epochs": 6.0,
        "learningRate": 2e-4,
        "batchSize": 1,
        "gradientAccumulation": 1,
    }
    assert any(
        note.startswith("epochs auto: 6 for 17 training examples") for note in resolved.notes
    )


def test_a_number_in_one_batch_field_fixes_it_and_auto_takes_the_rest() -> None:
    fixed_batch = resolve(TrainingSpec(batch_size=2), "lora", examples=5000, rows=1000).training
    assert (fixed_batch.batch_size, fixed_batch.gradient_accumulation) == (2, 4)
    fixed_accumulation = resolve(
        TrainingSpec(gradient_accumulation=16), "lora", examples=5000, rows=1000
    ).training
    assert (fixed_accumulation.batch_size, fixed_accumulation.gradient_accumulation) == (1, 16)


@pytest.mark.parametrize(
    ("method", "rate"), [("qlora", 2e-4), ("lora", 2e-4), ("full", 2e-5), ("prompt-tuning", 3e-2)]
)
def test_auto_learning_rate_is_chosen_by_method(method: str, rate: float) -> None:
    assert resolve(TrainingSpec(), method, examples=500, rows=500).training.learning_rate == rate


def test_explicit_values_are_kept_and_nothing_is_reported_as_chosen() -> None:
    explicit = TrainingSpec(epochs=2, learning_rate=1e-3, batch_size=4, gradient_accumulation=2)
    resolved = resolve(explicit, "lora", examples=17, rows=17)
    assert resolved.training == explicit
    assert resolved.chosen == {} and resolved.notes == []
