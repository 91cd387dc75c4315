"""Small builders of TuningJob manifests and Kubernetes objects for operator unit tests."""

from __future__ import annotations

import copy
from typing import Any

from kubetune.api.manifest import parse_tuningjob
from kubetune.api.v1alpha1 import TuningJob
from kubetune.operator.settings import Settings

MANIFEST: dict[str, Any] = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "TuningJob",
    "metadata": {"name": "dolly", "namespace": "team-a"},
    "spec": {
        "model": {"source": "s3://models/tiny-llama/"},
        "dataset": {"source": "s3://datasets/dolly.jsonl", "format": "dolly"},
        "output": {"destination": "s3://adapters/dolly/"},
        "s3": {"credentialsSecret": "s3-credentials"},
    },
}


def manifest(**spec_updates: Any) -> dict[str, Any]:
    """MANIFEST with top-level spec sections replaced or added."""
    document = copy.deepcopy(MANIFEST)
    document["spec"].update(copy.deepcopy(spec_updates))
    return document


def tuningjob(**spec_updates: Any) -> TuningJob:
    return parse_tuningjob(manifest(**spec_updates))


def settings(**values: Any) -> Settings:
    """Operator settings; without the Validating step unless asked for (validate_data=True):
    most tests here are about the GPU Job itself."""
    return Settings(**{"validate_data": False, **values})


def job(
    *, suspend: bool = False, conditions: list[dict] | None = None, failed: int = 0, **status: Any
) -> dict:
    return {
        "metadata": {"name": "dolly", "namespace": "team-a", "uid": "job-uid"},
        "spec": {"suspend": suspend},
        "status": {"conditions": conditions or [], "failed": failed, **status},
    }


def condition(type_: str, reason: str = "", message: str = "", status: str = "True") -> dict:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:10:00Z",
    }


def pod(
    name: str = "dolly-abcde",
    *,
    phase: str = "Pending",
    created: str = "2026-01-01T00:00:00Z",
    node: str | None = None,
    scheduled: dict | None = None,
    state: dict | None = None,
    deleting: bool = False,
) -> dict:
    status: dict[str, Any] = {"phase": phase, "conditions": [scheduled] if scheduled else []}
    if state is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": state}]
    body = {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"nodeName": node} if node else {},
        "status": status,
    }
    if deleting:
        body["metadata"]["deletionTimestamp"] = "2026-01-01T00:20:00Z"
    return body


def terminated(code: int, message: str = "", started: str = "2026-01-01T00:01:00Z") -> dict:
    return {"terminated": {"exitCode": code, "message": message, "startedAt": started}}


def running(started: str = "2026-01-01T00:01:00Z") -> dict:
    return {"running": {"startedAt": started}}
