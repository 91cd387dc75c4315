"""Kubernetes Events for TuningJob transitions (pure: the body of an events.k8s.io/v1 Event)."""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import API_VERSION, KIND

REPORTING_CONTROLLER = "kubetune.dev/operator"
NOTE_LIMIT = 1024  # the API server's limit on Event.note

# Reasons that mean something needs a person's attention while the run is not (yet) failed.
WARNING_REASONS = frozenset(
    {
        "Unschedulable",
        "ErrImagePull",
        "ErrImageNeverPull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "Restarting",
        "JobConflict",
        "JobForbidden",
    }
)


def transition_event(
    tuningjob: dict[str, Any],
    *,
    phase: str,
    reason: str,
    message: str,
    now: str,
    instance: str,
    unique: str,
) -> dict[str, Any]:
    """An Event about `tuningjob`; `unique` tells Events of one object apart (kubectl uses a timestamp)."""
    metadata = tuningjob["metadata"]
    warning = phase == "Failed" or reason in WARNING_REASONS
    note = (
        message
        if len(message.encode()) <= NOTE_LIMIT
        else message.encode()[: NOTE_LIMIT - 3].decode(errors="ignore") + "…"
    )
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{metadata['name']}.{unique}", "namespace": metadata["namespace"]},
        "eventTime": now,
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance[:128],
        "action": phase,
        "reason": reason,
        "note": note,
        "type": "Warning" if warning else "Normal",
        "regarding": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata.get("uid", ""),
        },
    }
