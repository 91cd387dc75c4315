"""A 17-row task (tests/data/marketing-emails.jsonl) trains sensibly with every default.

Nothing in the manifest but the model, the data and the destination: the trainer
chooses the epochs, the batch and the learning rate from the data, holds out no
validation split, does not pack, says so in warnings, and records what it chose in
the summary, the model card and the termination message's metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.manifest import parse_tuningjob
from kubetune.trainer import recipe

EMAILS = Path(__file__).resolve().parents[1] / "data" / "marketing-emails.jsonl"


def defaults_job(model: Path, out: Path, **spec: Any) -> Any:
    return parse_tuningjob(
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "TuningJob",
            "metadata": {"name": "emails"},
            "spec": {
                "model": {"source": str(model)},
                "dataset": {"source": str(EMAILS)},
                "method": {"type": "lora"},  # qlora's 4-bit base is no faster on CPU
                "output": {"destination": str(out)},
                "resources": {"gpus": 0},
                **spec,
            },
        }
    )


def test_seventeen_rows_train_with_epochs_batch_and_rate_chosen_from_the_data(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(EMAILS.read_text().splitlines()) == 17
    with caplog.at_level(logging.WARNING):
        result = recipe.train(
            defaults_job(tiny_model, tmp_path / "out"),
            recipe.RunOptions(scratch=tmp_path / "scratch", metrics_port=None),
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        w.startswith("small data: 17 training examples (fewer than 100), so no validation")
        for w in warnings
    ), warnings
    assert any(w.startswith("small data: not packed") for w in warnings), warnings
    assert any(w.startswith("epochs auto: 6 for 17 training examples") for w in warnings), warnings

    # 6 epochs of 17 single-example steps: the OpenAI rule's 102 steps of one example.
    assert result.metrics["steps"] == 102 and result.metrics["epochs"] == 6
    assert {k: v for k, v in result.metrics.items() if k.startswith("chosen_")} == {
        "chosen_epochs": 6.0,
        "chosen_learning_rate": 2e-4,
        "chosen_batch_size": 1.0,
        "chosen_gradient_accumulation": 1.0,
    }
    assert "eval_loss" not in result.metrics  # no validation split
    summary = result.summary
    assert summary["training"]["epochs"] == 6.0 and summary["training"]["batchSize"] == 1
    assert summary["data"]["packing"] is False and "validation examples" not in summary["data"]
    train = [
        json.loads(line)
        for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
        if '"train"' in line
    ]
    # A random tiny model on real emails at the LoRA rate: the loss falls (~7 -> ~6 nats).
    assert train[-1]["loss"] < train[0]["loss"] * 0.9, (train[0]["loss"], train[-1]["loss"])

    report = json.loads((tmp_path / "out" / "prepare-report.json").read_text())
    assert len(report["choices"]) == 2 and report["splits"]["train"]["rows"] == 17
    card = (tmp_path / "out" / "adapter" / "README.md").read_text()
    assert "Chosen from the data" in card and "- epochs auto: 6 for 17 training examples" in card
    assert "| optimizer steps | 102 |" in card


def test_early_stopping_keeps_the_validation_split_of_a_small_set(
    tiny_model: Path, tmp_path: Path
) -> None:
    result = recipe.train(
        defaults_job(
            tiny_model,
            tmp_path / "out",
            training={"earlyStopping": {"patience": 2}, "maxSteps": 4, "evalEvery": 2},
            dataset={"source": str(EMAILS), "validation": {"fraction": 0.2}},
        ),
        recipe.RunOptions(scratch=tmp_path / "scratch", metrics_port=None),
    )
    assert "eval_loss" in result.metrics
    notes = result.summary["chosen"]["notes"]
    assert any("held out anyway because earlyStopping/exportBest" in n for n in notes), notes
