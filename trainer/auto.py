"""Hyperparameters chosen from the data: what `auto` means, and the small-data rules.

`resolve(training, method_type, examples, rows)` turns the spec's `auto` values into
numbers, once the data is prepared (so its size is known), and says what it chose and
why. The rules (also in docs/trainer.md and the fields' descriptions):

- epochs: 3, raised to ceil(100 / examples) (at most 25) when 3 epochs would show the
  model fewer than 100 examples, and lowered to 25000 / examples (at least 1) when they
  would show it more than 25000: the rule of OpenAI's fine-tuning API, which has been
  tuned on many small tasks;
- sequences per optimizer step: the training rows / 16 rounded down to a power of two,
  between 1 and 8: at least 16 optimizer steps an epoch on small data, and 8 a step
  (kubetune's earlier fixed default, 1 x 8) from 128 rows on. batchSize x
  gradientAccumulation make it up: a number given for one fixes it and the other takes
  the rest; auto in both is 1 x steps' sequences (a micro-batch of one fits any model);
- learning rate: by method, 2e-4 for qlora/lora (the QLoRA paper), 2e-5 for full
  fine-tuning (the usual order for full fine-tunes of small models) and 3e-2 for prompt
  tuning (peft's examples): the trained weights differ in kind, not the data.

The small-data rules live in the data pipeline (`kubetune.trainer.data.pipeline`), where
the examples are counted: with fewer than SMALL_DATA examples a validation *fraction*
is not held out (a few rows of validation measure noise, and each row matters for
training), unless earlyStopping or exportBest needs it; and packing that would leave
fewer than MIN_PACKED_ROWS rows is not done (a 17-example set in 2 packs gives 2 steps
an epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.v1alpha1 import AUTO, TrainingSpec

SMALL_DATA = 100  # examples: below this, no validation fraction is held out by default
MIN_PACKED_ROWS = 16  # rows: packing that leaves fewer is not done
MIN_EXAMPLES_SEEN, MAX_EXAMPLES_SEEN, DEFAULT_EPOCHS, MAX_EPOCHS = 100, 25000, 3, 25
MAX_SEQUENCES_PER_STEP = 8
LEARNING_RATES = {"qlora": 2.0e-4, "lora": 2.0e-4, "full": 2.0e-5, "prompt-tuning": 3.0e-2}


@dataclass(frozen=True)
class Resolved:
    training: TrainingSpec  # every auto replaced by its value
    chosen: dict[str, Any] = field(default_factory=dict)  # camelCase field -> value, auto ones
    notes: list[str] = field(default_factory=list)  # why, one line each


def auto_epochs(examples: int) -> float:
    if examples * DEFAULT_EPOCHS < MIN_EXAMPLES_SEEN:
        return float(min(MAX_EPOCHS, math.ceil(MIN_EXAMPLES_SEEN / max(examples, 1))))
    if examples * DEFAULT_EPOCHS > MAX_EXAMPLES_SEEN:
        return round(max(1.0, MAX_EXAMPLES_SEEN / examples), 4)
    return float(DEFAULT_EPOCHS)


def sequences_per_step(rows: int) -> int:
    target = max(rows // 16, 1)
    return min(2 ** int(math.log2(target)), MAX_SEQUENCES_PER_STEP)


def resolve(training: TrainingSpec, method_type: str, examples: int, rows: int) -> Resolved:
    """The training settings with every auto chosen; `examples` and `rows` of the train split."""
    update: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    notes: list[str] = []
    if training.epochs == AUTO:
        update["epochs"] = chosen["epochs"] = auto_epochs(examples)
        notes.append(
            f"epochs auto: {update['epochs']:g} for {examples} training examples (3, at least "
            f"{MIN_EXAMPLES_SEEN} and at most {MAX_EXAMPLES_SEEN} examples seen, at most "
            f"{MAX_EPOCHS} epochs)"
            + (" (training.maxSteps overrides it)" if training.max_steps else "")
        )
    if training.learning_rate == AUTO:
        update["learning_rate"] = chosen["learningRate"] = LEARNING_RATES[method_type]
        notes.append(f"learningRate auto: {update['learning_rate']:g} for method {method_type}")
    batch, accumulation = training.batch_size, training.gradient_accumulation
    if AUTO in (batch, accumulation):
        per_step = sequences_per_step(rows)
        if batch == AUTO and accumulation == AUTO:
            batch, accumulation = 1, per_step
        elif batch == AUTO:
            batch = max(1, per_step // int(accumulation))
        else:
            accumulation = max(1, per_step // int(batch))
        if training.batch_size == AUTO:
            update["batch_size"] = chosen["batchSize"] = batch
        if training.gradient_accumulation == AUTO:
            update["gradient_accumulation"] = chosen["gradientAccumulation"] = accumulation
        notes.append(
            f"batch auto: {batch} x {accumulation} sequences per optimizer step per process, "
            f"for {rows} training rows (rows / 16 as a power of two, 1 to {MAX_SEQUENCES_PER_STEP})"
        )
    return Resolved(training.model_copy(update=update), chosen, notes)
