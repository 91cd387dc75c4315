"""What `kubetune status` and `kubetune wait` say about a TuningJob (pure functions)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

from kubetune.api.status import TuningJobStatus


class WaitExit(enum.IntEnum):
    """`kubetune wait`'s exit status: how the run ended (or why the wait did)."""

    SUCCEEDED = 0
    FAILED = 1
    # 2 is click's usage error.
    NOT_FOUND = 3
    TIMED_OUT = 4


def describe(tuningjob: Mapping[str, Any]) -> str:
    """A few lines for a person: phase, progress, loss, ETA, reason and message, outputs."""
    metadata = tuningjob.get("metadata") or {}
    status = TuningJobStatus.model_validate(tuningjob.get("status") or {})
    spec = tuningjob.get("spec") or {}
    rows: list[tuple[str, str]] = [
        ("Name", f"{metadata.get('namespace', '')}/{metadata.get('name', '')}".lstrip("/")),
        ("Phase", status.phase or "(not seen by the operator yet)"),
    ]
    if status.reason and status.reason != status.phase:
        rows.append(("Reason", status.reason))
    if status.message:
        rows.append(("Message", status.message))
    progress = status.progress
    if progress is not None:
        if progress.summary:
            rows.append(("Progress", progress.summary))
        if progress.epoch:
            rows.append(("Epoch", progress.epoch))
        losses = [
            f"{label} {value}"
            for label, value in (("train", progress.loss), ("eval", progress.eval_loss))
            if value
        ]
        if losses:
            rows.append(("Loss", ", ".join(losses)))
        if progress.tokens_per_second:
            rows.append(("Speed", f"{progress.tokens_per_second} tokens/s"))
        if progress.eta:
            rows.append(("ETA", progress.eta))
    if status.start_time:
        rows.append(("Started", status.start_time))
    if status.completion_time:
        rows.append(("Ended", status.completion_time))
    if status.restarts:
        rows.append(("Restarts", str(status.restarts)))
    if status.output and status.output.adapter:
        rows.append(("Adapter", status.output.adapter))
    if status.output and status.output.checkpoint:
        rows.append(("Checkpoint", status.output.checkpoint))
    destination = (spec.get("output") or {}).get("destination")
    if destination:
        rows.append(("Output", destination))
    if status.job_name:
        rows.append(("Job", status.job_name))
    width = max(len(k) for k, _ in rows) + 1
    return "\n".join(f"{k + ':':<{width}} {v}" for k, v in rows)


def outcome(tuningjob: Mapping[str, Any]) -> WaitExit | None:
    """The exit status for a finished run; None while it has not finished."""
    phase = (tuningjob.get("status") or {}).get("phase")
    if phase == "Succeeded":
        return WaitExit.SUCCEEDED
    if phase == "Failed":
        return WaitExit.FAILED
    return None


def newest_pod(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The trainer pod whose log a person wants: the newest one (a retry replaces the last)."""
    return max(
        pods,
        key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "",
        default=None,
    )
