"""Exit codes and termination messages: every way a run ends maps to the contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api.contract import TERMINATION_LOG_ENV, ExitCode, TerminationMessage
from kubetune.api.manifest import Problem, SpecError
from kubetune.trainer.errors import BadDataError, InvalidConfigError, Preempted, StorageAccessError
from kubetune.trainer.outcome import (
    OUTCOME_DIR_ENV,
    Outcome,
    outcome_of,
    pick,
    read_outcomes,
    report,
    success,
)


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (
            SpecError("job.yaml", [Problem("spec.training.learningRate", "must be > 0", 12)]),
            ExitCode.INVALID_CONFIG,
            "InvalidSpec",
        ),
        (
            InvalidConfigError("spec.model.source: no weights"),
            ExitCode.INVALID_CONFIG,
            "InvalidSpec",
        ),
        (BadDataError("no usable records"), ExitCode.BAD_DATA, "BadData"),
        (StorageAccessError("s3://b/k: access denied"), ExitCode.STORAGE_ACCESS, "StorageAccess"),
        (Preempted("stopped by SIGTERM"), ExitCode.PREEMPTED, "Preempted"),
        (RuntimeError("CUDA out of memory"), ExitCode.FAILED, "TrainerError"),
    ],
)
def test_each_error_maps_to_its_exit_code_and_reason(
    error: BaseException, code: ExitCode, reason: str
) -> None:
    outcome = outcome_of(error)
    assert outcome.exit_code == code
    assert outcome.message.reason == reason
    assert outcome.message.message


def test_spec_errors_keep_file_line_and_field() -> None:
    error = SpecError("job.yaml", [Problem("spec.training.learningRate", "must be > 0", 12)])
    assert (
        outcome_of(error).message.message == "job.yaml:12: spec.training.learningRate: must be > 0"
    )


def test_unexpected_errors_name_their_type() -> None:
    assert (
        outcome_of(RuntimeError("CUDA out of memory")).message.message
        == "RuntimeError: CUDA out of memory"
    )


def test_preemption_carries_the_checkpoint() -> None:
    error = Preempted("stopped")
    error.checkpoint = "s3://b/run/checkpoints/step-000010/"  # type: ignore[attr-defined]
    assert outcome_of(error).message.checkpoint == "s3://b/run/checkpoints/step-000010/"


def test_success_keeps_finite_metrics_only() -> None:
    outcome = success(
        "s3://b/run/adapter/", None, {"eval_loss": 1.25, "eval_perplexity": float("inf")}
    )
    assert outcome.exit_code == ExitCode.OK
    body = json.loads(outcome.message.to_json())
    assert body == {
        "adapter": "s3://b/run/adapter/",
        "metrics": {"eval_loss": 1.25},
        "reason": "Succeeded",
    }


def test_a_single_process_writes_the_termination_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(log))
    monkeypatch.delenv(OUTCOME_DIR_ENV, raising=False)
    report(outcome_of(BadDataError("nothing left")), rank=0)
    assert TerminationMessage.from_json(log.read_text()) == TerminationMessage(
        "BadData", "nothing left"
    )


def test_workers_hand_outcomes_to_the_launcher_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(log))
    monkeypatch.setenv(OUTCOME_DIR_ENV, str(tmp_path))
    report(outcome_of(Preempted("stopped")), rank=1)
    report(outcome_of(RuntimeError("boom")), rank=0)
    assert not log.exists()
    outcomes = read_outcomes(tmp_path)
    assert list(outcomes) == [1, 0]
    assert pick(outcomes, {}).message.message == "RuntimeError: boom"


def failed(text: str) -> Outcome:
    return outcome_of(RuntimeError(text))


def test_the_launcher_picks_the_outcome_that_explains_the_run() -> None:
    ok, preempted = success("a/", None, {}), outcome_of(Preempted("stopped"))
    assert pick({0: ok, 1: ok}, {}) is ok
    assert pick({0: preempted, 1: preempted}, {}).exit_code == ExitCode.PREEMPTED
    # The first failure explains the run; later ones (other ranks losing their peer) do not.
    assert (
        pick({1: failed("first"), 0: failed("second")}, {}).message.message == "RuntimeError: first"
    )
    # A failure beats a preemption; a worker that died without a word is a failure.
    assert pick({0: preempted, 1: failed("boom")}, {}).exit_code == ExitCode.FAILED
    lost = pick({0: ok}, {1: "exited with code -9 (signal SIGKILL)"})
    assert (lost.exit_code, lost.message.message) == (
        ExitCode.FAILED,
        "worker rank 1 exited with code -9 (signal SIGKILL)",
    )
