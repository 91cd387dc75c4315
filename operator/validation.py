"""What the operator checks beyond the CRD schema, before it creates a Job.

The API server already enforces the schema and CEL rules generated from the spec
model. The operator parses the body with the same model (so a cluster running an
older CRD still gets every rule), then checks what only makes sense in a cluster or
depends on the operator's settings: URIs a pod can reach, PVC names, /dev/shm that
fits in the memory limit. A problem here is permanent: the TuningJob goes to phase
Failed with reason InvalidSpec and a message that says what to change; nothing is
retried until the spec changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kubetune.api.locations import location_kind, pvc_claim
from kubetune.api.manifest import Problem, SpecError, parse_tuningjob
from kubetune.api.quantity import parse_quantity
from kubetune.api.v1alpha1 import TuningJob
from kubetune.operator.settings import Settings

_S3 = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LOCAL_HINT = "a local path works only with `kubetune train` on a workstation"


def validate(document: Mapping[str, Any], settings: Settings, source: str) -> TuningJob:
    """The TuningJob in `document`, or SpecError listing every problem in it."""
    tuningjob = parse_tuningjob(document, source)
    problems = semantic_problems(tuningjob, settings)
    if problems:
        raise SpecError(source, problems)
    return tuningjob


def semantic_problems(tuningjob: TuningJob, settings: Settings) -> list[Problem]:
    spec = tuningjob.spec
    problems: list[Problem] = []

    model = spec.model.source
    kind = location_kind(model)
    if kind == "pvc":
        claim = pvc_claim(model)
        if not claim or len(claim) > 253 or not _DNS_SUBDOMAIN.match(claim):
            problems.append(
                Problem(
                    "spec.model.source",
                    f"pvc:// needs a PersistentVolumeClaim name, as pvc://CLAIM/PATH (got {model!r})",
                )
            )
    elif kind == "s3":
        problems += _s3_problems("spec.model.source", model)
    elif kind != "hf":
        problems.append(
            Problem(
                "spec.model.source",
                f"use s3://, pvc:// or hf:// in a cluster; {_LOCAL_HINT} (got {model!r})",
            )
        )

    dataset = spec.dataset
    problems += _data_source("spec.dataset.source", dataset.source)
    if dataset.validation is not None and dataset.validation.source is not None:
        problems += _data_source("spec.dataset.validation.source", dataset.validation.source)
    if dataset.test is not None and dataset.test.source is not None:
        problems += _data_source("spec.dataset.test.source", dataset.test.source)
    problems += _s3_only("spec.output.destination", spec.output.destination)
    if spec.method.init_adapter is not None:
        problems += _s3_only("spec.method.initAdapter", spec.method.init_adapter)

    memory = spec.resources.memory or settings.default_memory
    shm = spec.resources.shm_size or settings.default_shm_size
    if parse_quantity(shm) >= parse_quantity(memory):
        problems.append(
            Problem(
                "spec.resources.shmSize",
                f"/dev/shm ({shm}) is memory and must fit inside the memory limit ({memory}); "
                "lower shmSize or raise resources.memory",
            )
        )
    return problems


def _data_source(field: str, uri: str) -> list[Problem]:
    """Data comes from S3, a PVC or over HTTP(S) (the trainer's fsspec reader) in a cluster."""
    if uri.startswith(("https://", "http://")):
        return []
    if location_kind(uri) == "pvc":
        claim = pvc_claim(uri)
        if not claim or len(claim) > 253 or not _DNS_SUBDOMAIN.match(claim):
            return [
                Problem(
                    field,
                    f"pvc:// needs a PersistentVolumeClaim name, as pvc://CLAIM/PATH (got {uri!r})",
                )
            ]
        return []
    if location_kind(uri) == "unsupported":
        return [
            Problem(
                field,
                f"use an s3://bucket/key, pvc://CLAIM/PATH or https:// URI in a cluster (got {uri!r}); other fsspec "
                "schemes work with `kubetune train` where their filesystem is installed",
            )
        ]
    return _s3_only(field, uri)


def _s3_only(field: str, uri: str) -> list[Problem]:
    if location_kind(uri) != "s3":
        return [
            Problem(
                field, f"use an s3://bucket/prefix URI in a cluster; {_LOCAL_HINT} (got {uri!r})"
            )
        ]
    return _s3_problems(field, uri)


def _s3_problems(field: str, uri: str) -> list[Problem]:
    if not _S3.match(uri):
        return [
            Problem(
                field,
                f"not a valid s3://bucket/key URI: the bucket name is 3-63 lowercase letters, digits, dots or dashes (got {uri!r})",
            )
        ]
    return []
