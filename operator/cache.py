"""What the operator keeps in memory of each watched object: only what it reads.

kopf's indices hold these trimmed copies. A pod's spec, for one, carries the whole
TuningJob as JSON in its environment; keeping it once per pod would multiply the
operator's memory by the size of every spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_META = (
    "name",
    "namespace",
    "uid",
    "generation",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "annotations",
    "ownerReferences",
)


def _metadata(body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata") or {}
    return {k: _plain(metadata[k]) for k in _META if k in metadata}


def tuningjob(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": _metadata(body),
        "spec": _plain(body.get("spec") or {}),
        "status": _plain(body.get("status") or {}),
    }


def job(body: Mapping[str, Any]) -> dict[str, Any]:
    spec = body.get("spec") or {}
    return {
        "metadata": _metadata(body),
        "spec": {"suspend": spec.get("suspend", False)},
        "status": _plain(body.get("status") or {}),
    }


def pod(body: Mapping[str, Any]) -> dict[str, Any]:
    status = body.get("status") or {}
    kept = ("phase", "reason", "message", "podIP", "conditions", "containerStatuses", "startTime")
    return {
        "metadata": _metadata(body),
        "spec": {"nodeName": (body.get("spec") or {}).get("nodeName")},
        "status": {k: _plain(status[k]) for k in kept if k in status},
    }


def _plain(value: Any) -> Any:
    """Deep-copy kopf's body views into plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
