"""How a run ends: an exit code of the contract and a termination message, on every exit we control.

`outcome_of(error)` maps what happened to `(ExitCode, TerminationMessage)`:

| what happened | exit code | reason |
|---|---|---|
| success | 0 | Succeeded (with the adapter URI and final metrics) |
| SpecError, InvalidConfigError | 78 | InvalidSpec |
| BadDataError | 65 | BadData |
| StorageAccessError | 77 | StorageAccess |
| Preempted (SIGTERM, checkpoint saved) | 75 | Preempted (with the checkpoint URI) |
| anything else | 1 | TrainerError (the exception type and text) |

A single process writes the message to the termination log itself. Under the data-
parallel launcher each worker writes its outcome to a file in the launcher's outcome
folder, and the launcher, once all workers are gone, picks the one that explains the
run (a failure over a preemption, the first failure over later ones, which are
usually its consequences) and writes that.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from kubetune.api.contract import TERMINATION_LOG, TERMINATION_LOG_ENV, ExitCode, TerminationMessage
from kubetune.api.manifest import SpecError
from kubetune.trainer.errors import Preempted, TrainerError

log = logging.getLogger(__name__)

# Internal to the launcher and its workers: where workers leave their outcomes.
OUTCOME_DIR_ENV = "KUBETUNE_OUTCOME_DIR"


@dataclass(frozen=True)
class Outcome:
    exit_code: ExitCode
    message: TerminationMessage

    def to_json(self) -> str:
        return json.dumps({"exit_code": int(self.exit_code), "message": asdict(self.message)})

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        body = json.loads(text)
        return cls(ExitCode(body["exit_code"]), TerminationMessage(**body["message"]))


def success(adapter: str, checkpoint: str | None, metrics: dict[str, float]) -> Outcome:
    message = TerminationMessage(
        reason=ExitCode.OK.reason, adapter=adapter, checkpoint=checkpoint, metrics=_finite(metrics)
    )
    return Outcome(ExitCode.OK, message)


def outcome_of(error: BaseException) -> Outcome:
    """The exit code and message for an exception that ended the run."""
    if isinstance(error, SpecError):
        return Outcome(
            ExitCode.INVALID_CONFIG,
            TerminationMessage(ExitCode.INVALID_CONFIG.reason, error.render()),
        )
    if isinstance(error, TrainerError):
        code = error.exit_code
        checkpoint = error.checkpoint if isinstance(error, Preempted) else None
        return Outcome(code, TerminationMessage(code.reason, str(error), checkpoint=checkpoint))
    if isinstance(error, KeyboardInterrupt):
        return Outcome(ExitCode.FAILED, TerminationMessage(ExitCode.FAILED.reason, "interrupted"))
    text = f"{type(error).__name__}: {error}".strip().rstrip(":")
    return Outcome(ExitCode.FAILED, TerminationMessage(ExitCode.FAILED.reason, text))


def termination_log_path() -> Path | None:
    """KUBETUNE_TERMINATION_LOG, else /dev/termination-log where the container runtime made it."""
    configured = os.environ.get(TERMINATION_LOG_ENV)
    if configured:
        return Path(configured)
    default = Path(TERMINATION_LOG)
    return default if default.exists() else None


def write_termination_log(message: TerminationMessage) -> None:
    path = termination_log_path()
    if path is None:
        return
    try:
        path.write_text(message.to_json(), encoding="utf-8")
    except OSError as e:
        log.warning("cannot write the termination message to %s: %s", path, e)


def report(outcome: Outcome, rank: int) -> None:
    """Hand the outcome on: to the launcher when there is one, else to the termination log."""
    folder = os.environ.get(OUTCOME_DIR_ENV)
    if folder:
        path = Path(folder) / f"rank-{rank:05d}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(outcome.to_json(), encoding="utf-8")
        tmp.replace(path)
    else:
        write_termination_log(outcome.message)


def pick(outcomes: dict[int, Outcome], missing: dict[int, str]) -> Outcome:
    """The outcome that explains a data-parallel run, from each rank's (or why it has none)."""
    failures = [
        o for o in outcomes.values() if o.exit_code not in (ExitCode.OK, ExitCode.PREEMPTED)
    ]
    if failures:
        return failures[0]
    if missing:
        rank, why = sorted(missing.items())[0]
        return Outcome(
            ExitCode.FAILED, TerminationMessage(ExitCode.FAILED.reason, f"worker rank {rank} {why}")
        )
    if any(o.exit_code == ExitCode.PREEMPTED for o in outcomes.values()):
        return outcomes.get(0) or next(
            o for o in outcomes.values() if o.exit_code == ExitCode.PREEMPTED
        )
    return outcomes[0]


def read_outcomes(folder: Path) -> dict[int, Outcome]:
    """Outcomes in the order the workers wrote them (the first failure first)."""
    paths = sorted(folder.glob("rank-*.json"), key=lambda p: p.stat().st_mtime_ns)
    return {
        int(p.stem.split("-")[1]): Outcome.from_json(p.read_text(encoding="utf-8")) for p in paths
    }


def _finite(metrics: Mapping[str, object]) -> dict[str, float]:
    # JSON has no NaN/Infinity; the operator parses this.
    import math

    return {
        k: round(float(v), 6)
        for k, v in metrics.items()
        if isinstance(v, int | float) and math.isfinite(v)
    }
