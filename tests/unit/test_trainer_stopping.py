"""Stopping rules as pure functions: early stopping, the best evaluation, the spike bound,
and token accuracy on logits whose argmax is known."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import pytest
import torch

from kubetune.api.v1alpha1 import EarlyStoppingSpec, TrainingSpec
from kubetune.trainer.loop import IGNORE_INDEX, TrainingDiverged, TrainLoop, loss_and_hits
from kubetune.trainer.stopping import Best, best_evaluation, early_stop_reason


def evals(*losses: float, every: int = 10) -> list[dict[str, Any]]:
    return [{"step": i * every, "eval_loss": loss} for i, loss in enumerate(losses)]


def test_the_best_evaluation_is_the_lowest_and_min_delta_keeps_the_earlier_one() -> None:
    assert best_evaluation([]) is None
    assert best_evaluation(evals(3.0, 2.0, 2.5, 1.99)) == Best(30, 1.99)
    assert best_evaluation(evals(3.0, 2.0, 2.5, 1.99), min_delta=0.05) == Best(10, 2.0)


def test_early_stopping_counts_evaluations_since_the_best() -> None:
    spec = EarlyStoppingSpec(patience=2)
    assert early_stop_reason(evals(3.0, 2.0, 2.1), spec) is None
    reason = early_stop_reason(evals(3.0, 2.0, 2.1, 2.05), spec)
    assert reason is not None and reason.startswith("early stopping at step 30: 2 evaluations")
    assert "best 2.0000 (step 10" in reason
    assert early_stop_reason(evals(3.0, 2.0, 2.1, 2.05), None) is None
    assert early_stop_reason(evals(3.0, 2.0, 1.9, 1.8), spec) is None  # still improving
    strict = EarlyStoppingSpec(patience=2, min_delta=0.5)
    assert early_stop_reason(evals(3.0, 2.0, 1.9, 1.8), strict) is not None


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are given: the argmax at each position is known."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, **inputs: Any) -> Any:
        return type("Out", (), {"logits": self.logits})()


def test_token_accuracy_counts_exact_argmax_hits_on_trained_targets_only() -> None:
    vocab = 5
    # Row: tokens [1, 2, 3, 4]; labels train tokens 2..4 (the first is the prompt).
    input_ids = torch.tensor([[1, 2, 3, 4]])
    labels = torch.tensor([[IGNORE_INDEX, 2, 3, 4]])
    predicted = [2, 0, 4, 1]  # position t predicts token t+1: hits at t=0 (2) and t=2 (4)
    logits = torch.full((1, 4, vocab), -10.0)
    for t, token in enumerate(predicted):
        logits[0, t, token] = 10.0
    total, hits = loss_and_hits(
        FixedLogits(logits), {"input_ids": input_ids, "labels": labels}, contextlib.nullcontext()
    )
    assert int(hits) == 2
    assert float(total) > 0


def spike_loop(factor: float | None) -> TrainLoop:
    loop = TrainLoop.__new__(TrainLoop)  # only what _check_divergence reads
    loop.training = TrainingSpec(loss_spike_factor=factor)
    loop.total_steps = 100
    loop.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    loop.progress = type("P", (), {"step": 0})()
    from collections import deque

    loop.recent_losses = deque(maxlen=20)
    return loop


def test_the_spike_bound_is_factor_times_the_median_and_at_least_the_margin_above_it() -> None:
    loop = spike_loop(10.0)
    for step, loss in enumerate([1.0] * 15):
        loop.progress.step = step
        loop._check_divergence(loss)
        loop.recent_losses.append(loss)
    loop.progress.step = 15
    loop._check_divergence(9.9)  # under 10 x 1.0
    with pytest.raises(TrainingDiverged, match=r"step 16 of 100: the loss spiked to 10\.5"):
        loop._check_divergence(10.5)

    small = spike_loop(10.0)  # a memorised dataset: tiny losses, the margin decides
    for step in range(15):
        small.progress.step = step
        small.recent_losses.append(0.01)
    small._check_divergence(1.5)  # 150x the median but under median + 2 nats
    with pytest.raises(TrainingDiverged):
        small._check_divergence(2.5)


def test_without_a_spike_factor_only_non_finite_losses_stop() -> None:
    loop = spike_loop(None)
    for step in range(15):
        loop.progress.step = step
        loop.recent_losses.append(1.0)
    loop._check_divergence(1000.0)
    for bad in (math.nan, math.inf):
        with pytest.raises(TrainingDiverged, match="the loss is"):
            loop._check_divergence(bad)


def test_no_spike_is_called_before_the_warmup_steps() -> None:
    loop = spike_loop(2.0)
    loop.recent_losses.extend([1.0, 1.0])
    loop.progress.step = 2
    loop._check_divergence(50.0)
