"""The loop's loss: shifted labels, pack boundaries, and token-correct gradient accumulation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api.v1alpha1 import LoraSpec, TrainingSpec, TuningJobSpec
from kubetune.trainer.batch import IGNORE_INDEX
from kubetune.trainer.data import PackedCollator
from kubetune.trainer.distributed import Dist
from kubetune.trainer.loop import (
    StopRequested,
    StopSignal,
    TrainLoop,
    count_tokens,
    shifted_labels,
)
from kubetune.trainer.model import load_model
from kubetune.trainer.plan import Hardware, make_plan
from kubetune.trainer.sampling import Schedule
from kubetune.trainer.state import TrainState

X = IGNORE_INDEX
collate_packed = PackedCollator(pad_token_id=0)


def test_shifted_labels_predict_the_next_token_and_never_across_a_pack_boundary() -> None:
    labels = torch.tensor([[X, 11, 12, X, 21, 22]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])  # two examples of 3 tokens
    assert shifted_labels(labels, positions).tolist() == [[11, 12, X, 21, 22, X]]
    # Even a trained first token is not predicted from the previous example.
    labels = torch.tensor([[10, 11, 12, 20, 21, 22]])
    assert shifted_labels(labels, positions).tolist() == [[11, 12, X, 21, 22, X]]
    # Without position ids (padded rows), only the row's end predicts nothing.
    assert shifted_labels(labels, None).tolist() == [[11, 12, 20, 21, 22, X]]


def test_count_tokens_counts_trained_targets_and_real_inputs() -> None:
    batch = {
        "input_ids": torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]]),
        "labels": torch.tensor([[X, 2, 3, X], [X, 5, X, X]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
    }
    assert count_tokens(batch) == (3, 5)
    packed = {
        "input_ids": torch.tensor([[1, 2, 3, 4]]),
        "labels": torch.tensor([[X, 2, X, 4]]),
        "position_ids": torch.tensor([[0, 1, 0, 1]]),
    }
    assert count_tokens(packed) == (2, 4)


def rows_with_uneven_trained_counts() -> list[dict[str, list[int]]]:
    """Four packed rows whose trained-token counts differ a lot (2 to 40)."""
    generator = torch.Generator().manual_seed(3)
    rows = []
    for examples in ([(10, 1)], [(30, 20), (20, 20)], [(6, 2)], [(40, 30), (16, 10)]):
        row: dict[str, list[int]] = {
            "input_ids": [],
            "labels": [],
            "position_ids": [],
            "seq_lengths": [],
        }
        for length, trained in examples:
            ids = torch.randint(5, 300, (length,), generator=generator).tolist()
            labels = [X] * (length - trained) + ids[length - trained :]
            row["input_ids"] += ids
            row["labels"] += labels
            row["position_ids"] += list(range(length))
            row["seq_lengths"].append(length)
        rows.append(row)
    return rows


def one_step(
    model_folder: Path, rows: list[dict[str, list[int]]], batch_size: int, accumulation: int
) -> tuple[dict[str, torch.Tensor], float]:
    job_spec = TuningJobSpec.model_validate(
        {
            "model": {"source": str(model_folder)},
            "dataset": {"source": "unused.jsonl"},
            "output": {"destination": "unused/"},
            "resources": {"gpus": 0},
            "method": {"type": "qlora", "gradientCheckpointing": True},
            "training": {
                "batchSize": batch_size,
                "gradientAccumulation": accumulation,
                "maxSteps": 1,
                "warmupRatio": 0.0,
                "seed": 1,
            },
        }
    )
    plan = make_plan(job_spec, Hardware.probe())
    lora = LoraSpec(r=4, alpha=8, dropout=0.0)
    model = load_model(model_folder, str(model_folder), plan, lora, torch.device("cpu"), seed=1)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=1.0)  # the update is the gradient itself
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    training = job_spec.training.model_copy(update={"max_grad_norm": 1e9})
    loop = TrainLoop(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=None,
        plan=plan,
        training=training,
        train_split=rows,
        collate=collate_packed,
        schedule=Schedule(len(rows), 1, batch_size, accumulation),
        total_steps=1,
        dist=Dist.single(),
        device=torch.device("cpu"),
        stop=StopSignal(),
        progress=TrainState(),
    )
    reports = list(loop.steps())
    assert len(reports) == 1 and loop.progress.step == 1
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return weights, reports[0].loss


def test_batch_1_times_accumulation_4_matches_batch_4_times_accumulation_1(
    tiny_model: Path,
) -> None:
    rows = rows_with_uneven_trained_counts()
    accumulated, accumulated_loss = one_step(tiny_model, rows, batch_size=1, accumulation=4)
    batched, batched_loss = one_step(tiny_model, rows, batch_size=4, accumulation=1)

    assert math.isclose(accumulated_loss, batched_loss, rel_tol=1e-5)
    for name, weight in batched.items():
        torch.testing.assert_close(accumulated[name], weight, rtol=1e-4, atol=1e-6, msg=name)

    # Uneven enough that averaging each micro-batch's mean loss (the classic
    # accumulation bug) would weigh a token in the 1-token row 50x more than one in a
    # 50-token row, and the two runs above would differ.
    counts = [count_tokens(collate_packed([row]))[0] for row in rows]
    assert max(counts) / min(counts) > 10, counts


def test_a_stop_between_micro_batches_discards_the_partial_step(tiny_model: Path) -> None:
    rows = rows_with_uneven_trained_counts()
    job_spec = TuningJobSpec.model_validate(
        {
            "model": {"source": "m"},
            "dataset": {"source": "d"},
            "output": {"destination": "o/"},
            "resources": {"gpus": 0},
        }
    )
    plan = make_plan(job_spec, Hardware.probe())
    model = load_model(
        tiny_model, "m", plan, LoraSpec(r=4, alpha=8, dropout=0.0), torch.device("cpu"), seed=1
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    stop = StopSignal()
    calls = {"n": 0}

    def collate(batch_rows: list[dict[str, Any]]) -> dict[str, Any]:
        calls["n"] += 1
        return collate_packed(batch_rows)

    loop = TrainLoop(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        scaler=None,
        plan=plan,
        training=TrainingSpec(batch_size=1, gradient_accumulation=4, max_steps=1),
        train_split=rows,
        collate=collate,
        schedule=Schedule(len(rows), 1, 1, 4),
        total_steps=1,
        dist=Dist.single(),
        device=torch.device("cpu"),
        stop=stop,
        progress=TrainState(),
    )
    original = loop._step

    def step_with_signal(batches: list[dict[str, Any]]) -> Any:
        stop.request("SIGTERM")  # arrives during the step, after the first micro-batch's check
        return original(batches)

    loop._step = step_with_signal  # type: ignore[method-assign]
    with pytest.raises(StopRequested):
        list(loop.steps())
    assert loop.progress.step == 0 and loop.progress.examples_into_epoch == 0
    assert all(p.grad is None for p in model.parameters() if p.requires_grad)
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.equal(before[n], after[n]) for n in before)
