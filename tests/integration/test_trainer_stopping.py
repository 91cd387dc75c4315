"""Training that knows when to stop, on real tiny runs.

Overfitting is made real, not simulated: the model trains on the animal task while the
validation split holds the same prompts with the classes swapped ("dog is a bird").
Learning the answer format first lowers the validation loss, learning the true classes
then raises it: a U-shaped curve whose minimum early stopping and exportBest must find.

Divergence cannot be produced reliably by a tiny fp32 model on CPU (even a learning
rate of 1.0 without clipping stays finite), so those tests inject the fault: the loss
of one step is made NaN, or 100x larger, inside the real loop and run, and the guard
must stop there with the step in the message and the contract's exit code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api.contract import ExitCode
from kubetune.api.manifest import parse_tuningjob
from kubetune.api.v1alpha1 import TuningJob
from kubetune.trainer import loop as loop_module
from kubetune.trainer import recipe
from kubetune.trainer.loop import TrainingDiverged
from tests.support.training import manifest, synthetic_records, write_records

OPTIONS = {"metrics_port": None}


def job(model: Path, data: Path, out: Path, **overrides: Any) -> TuningJob:
    return parse_tuningjob(manifest(str(model), str(data), str(out), **overrides))


def train(job: TuningJob, scratch: Path) -> recipe.TrainResult:
    return recipe.train(job, recipe.RunOptions(scratch=scratch, **OPTIONS))


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def swapped_validation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    swap = {"mammal": "bird", "bird": "mammal"}
    rows = []
    for record in synthetic_records(24, seed=5):
        animal_class = record["response"].rstrip(".").rsplit(" ", 1)[-1]
        rows.append(
            {**record, "response": record["response"].replace(animal_class, swap[animal_class])}
        )
    return write_records(tmp_path_factory.mktemp("swapped") / "validation.jsonl", rows)


U_SHAPE = {
    "maxSteps": 40,
    "learningRate": 1e-2,
    "batchSize": 4,
    "gradientAccumulation": 1,
    "evalEvery": 4,
    "checkpointEvery": 40,
    "logEvery": 4,
}


def u_shaped_job(
    model: Path, data: Path, validation: Path, out: Path, **training: Any
) -> TuningJob:
    return job(
        model,
        data,
        out,
        dataset={"validation": {"fraction": None, "source": str(validation)}},
        training={**U_SHAPE, **training},
    )


def best_of(evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    return min(evaluations, key=lambda r: r["eval_loss"])


def test_export_best_exports_the_weights_of_the_lowest_validation_loss(
    tiny_model: Path, synthetic_data: Path, swapped_validation: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    result = train(
        u_shaped_job(
            tiny_model, synthetic_data, swapped_validation, tmp_path / "out", exportBest=True
        ),
        tmp_path / "scratch",
    )
    evaluations = result.summary["evaluations"]
    best = best_of(evaluations)
    assert 0 < best["step"] < 40, evaluations  # the curve is U-shaped: a real minimum inside
    assert result.metrics["steps"] == 40
    assert result.summary["exported"] == {
        "step": best["step"],
        "eval_loss": best["eval_loss"],
        "best": True,
    }
    assert result.metrics["exported_step"] == best["step"]
    exported = load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors")
    kept = load_file(tmp_path / "out" / "best" / "adapter_model.safetensors")
    final = load_file(
        tmp_path / "out" / "checkpoints" / "step-000040" / "adapter_model.safetensors"
    )
    assert exported.keys() == kept.keys() == final.keys()
    assert all(torch.equal(exported[k], kept[k]) for k in exported)
    assert any(not torch.equal(exported[k], final[k]) for k in exported)
    card = (tmp_path / "out" / "adapter" / "README.md").read_text()
    assert f"| exported_step | {best['step']} |" in card


def test_early_stopping_stops_after_patience_evaluations_without_a_better_loss(
    tiny_model: Path,
    synthetic_data: Path,
    swapped_validation: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    the_job = u_shaped_job(
        tiny_model,
        synthetic_data,
        swapped_validation,
        tmp_path / "out",
        earlyStopping={"patience": 2},
    )
    result = train(the_job, tmp_path / "scratch")
    evaluations = result.summary["evaluations"]
    best = best_of(evaluations)
    stop_step = best["step"] + 2 * U_SHAPE["evalEvery"]
    assert stop_step < 40
    assert result.metrics["steps"] == stop_step
    assert [r["step"] for r in evaluations][-1] == stop_step
    assert result.summary["stopped_early"].startswith(f"early stopping at step {stop_step}: 2 ")
    assert result.metrics["exported_step"] == best["step"]  # the best, not the last
    assert result.checkpoint_uri == f"{tmp_path}/out/checkpoints/step-{stop_step:06d}/"
    train_records = [r for r in records(tmp_path / "out" / "metrics.jsonl") if r["kind"] == "train"]
    assert train_records[-1]["step"] == stop_step

    # Started again (a pod lost during export): it stays stopped and exports the same best.
    steps = {"count": 0}
    original = loop_module.TrainLoop._step

    def counting(self: loop_module.TrainLoop, batches: list[dict[str, Any]]) -> Any:
        steps["count"] += 1
        return original(self, batches)

    monkeypatch.setattr(loop_module.TrainLoop, "_step", counting)
    again = train(the_job, tmp_path / "scratch-2")
    assert steps["count"] == 0
    assert again.metrics["steps"] == stop_step
    assert again.metrics["exported_step"] == best["step"]


def test_token_accuracy_is_logged_for_train_and_eval_and_rises_as_the_task_is_learned(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    result = train(
        job(
            tiny_model,
            synthetic_data,
            tmp_path / "out",
            training={**U_SHAPE, "maxSteps": 16, "checkpointEvery": 16},
        ),
        tmp_path / "scratch",
    )
    evaluations = result.summary["evaluations"]
    assert (
        evaluations[0]["eval_token_accuracy"] < 0.2 < 0.7 < evaluations[-1]["eval_token_accuracy"]
    )
    assert result.metrics["eval_token_accuracy"] == evaluations[-1]["eval_token_accuracy"]
    train_records = [r for r in records(tmp_path / "out" / "metrics.jsonl") if r["kind"] == "train"]
    accuracies = [r["token_accuracy"] for r in train_records]
    assert all(0.0 <= a <= 1.0 for a in accuracies) and accuracies[-1] > accuracies[0]
    assert result.metrics["train_token_accuracy"] == accuracies[-1]


# ---------------------------------------------------------------------------
# Divergence (injected: see the module docstring)


def inject(monkeypatch: pytest.MonkeyPatch, at_step: int, fault: Any) -> None:
    """Replace the loss of every micro-batch of optimizer step `at_step` by fault(loss)."""
    original = loop_module.loss_and_hits
    step_of = {"current": 0}
    original_step = loop_module.TrainLoop._step

    def counting_step(self: loop_module.TrainLoop, batches: list[dict[str, Any]]) -> Any:
        step_of["current"] = self.progress.step + 1
        return original_step(self, batches)

    def faulty(model: Any, batch: Any, autocast: Any) -> Any:
        total, hits = original(model, batch, autocast)
        return (fault(total) if step_of["current"] == at_step else total), hits

    monkeypatch.setattr(loop_module.TrainLoop, "_step", counting_step)
    monkeypatch.setattr(loop_module, "loss_and_hits", faulty)


@pytest.mark.parametrize(
    ("at_step", "fault", "expected"),
    [
        (5, lambda loss: loss * float("nan"), "training diverged at step 5 of 16: the loss is nan"),
        (12, lambda loss: loss * 100, "training diverged at step 12 of 16: the loss spiked to"),
    ],
    ids=["nan", "spike"],
)
def test_a_diverged_step_stops_the_run_before_the_update_with_the_step_and_the_exit_code(
    at_step: int,
    fault: Any,
    expected: str,
    tiny_model: Path,
    synthetic_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubetune.trainer.outcome import outcome_of

    the_job = job(
        tiny_model,
        synthetic_data,
        tmp_path / "out",
        training={"maxSteps": 16, "checkpointEvery": 4, "evalEvery": 100, "logEvery": 1},
    )
    inject(monkeypatch, at_step, fault)
    with pytest.raises(TrainingDiverged) as caught:
        train(the_job, tmp_path / "scratch")
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "lower training.learningRate" in message
    outcome = outcome_of(caught.value)
    assert outcome.exit_code == ExitCode.INVALID_CONFIG and outcome.exit_code.permanent
    assert outcome.message.reason == "InvalidSpec" and expected in outcome.message.message
    steps = [
        r["step"] for r in records(tmp_path / "scratch" / "metrics.jsonl") if r["kind"] == "train"
    ]
    assert steps[-1] == at_step - 1  # the diverged step was never applied nor recorded
    last_checkpoint = (at_step - 1) // 4 * 4
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())[-1] == (
        f"step-{last_checkpoint:06d}"
    )
