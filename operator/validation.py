"""What the operator checks beyond the CRD schema, before it creates a Job.

The API server already enforces the schema and CEL rules generated from the spec
model. The operator parses the body with the same model (so a cluster running an
older CRD still gets every rule), then checks what only makes sense in a cluster or
depends on the operator's settings: URIs a pod can reach, PVC names, /dev/shm that
fits in the memory limit. A problem here is permanent: the TuningJob goes to phase
Failed with reason InvalidSpec and a message that says what to change; nothing is
retried until the spec changes.

The admin's policy (operator settings ALLOWED_TRAINER_IMAGES, ALLOWED_SERVICE_ACCOUNTS)
is checked here too, before any Job exists: a TuningJob outside it fails with reason
NotAllowed and a message naming the setting it broke.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from kubetune.api.locations import location_kind, pvc_claim
from kubetune.api.manifest import Problem, SpecError, parse_tuningjob
from kubetune.api.quantity import parse_quantity
from kubetune.api.v1alpha1 import TuningJob
from kubetune.operator.settings import ENV_PREFIX, Settings


class PolicyError(SpecError):
    """A TuningJob the operator's settings do not allow; the message names the setting."""

    reason = "NotAllowed"


_S3 = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LOCAL_HINT = "a local path works only with `kubetune train` on a workstation"


def validate(document: Mapping[str, Any], settings: Settings, source: str) -> TuningJob:
    """The TuningJob in `document`, or SpecError listing every problem in it."""
    tuningjob = parse_tuningjob(document, source)
    problems = semantic_problems(tuningjob, settings)
    if problems:
        raise SpecError(source, problems)
    refusals = policy_problems(tuningjob, settings)
    if refusals:
        raise PolicyError(source, refusals)
    return tuningjob


def policy_problems(tuningjob: TuningJob, settings: Settings) -> list[Problem]:
    """What the admin's allowlists refuse in this TuningJob, each naming its setting."""
    runtime = tuningjob.spec.runtime
    problems: list[Problem] = []
    image = runtime.image
    if (
        image
        and settings.allowed_trainer_images
        and image != settings.trainer_image
        and not _allowed(image, settings.allowed_trainer_images)
    ):
        problems.append(
            Problem(
                "spec.runtime.image",
                f"{image!r} is not allowed by the operator setting {ENV_PREFIX}ALLOWED_TRAINER_IMAGES "
                f"(chart value operator.allowedTrainerImages: {', '.join(settings.allowed_trainer_images)}); "
                "leave spec.runtime.image unset for the default trainer image, or ask your cluster admin",
            )
        )
    account = runtime.service_account_name
    if (
        account
        and settings.allowed_service_accounts
        and not _allowed(account, settings.allowed_service_accounts)
    ):
        problems.append(
            Problem(
                "spec.runtime.serviceAccountName",
                f"{account!r} is not allowed by the operator setting "
                f"{ENV_PREFIX}ALLOWED_SERVICE_ACCOUNTS (chart value operator.allowedServiceAccounts: "
                f"{', '.join(settings.allowed_service_accounts)}); use one of those, or ask your cluster admin",
            )
        )
    return problems


def _allowed(value: str, patterns: Sequence[str]) -> bool:
    """A pattern matches itself exactly, or as a prefix when it ends in *."""
    return any(value.startswith(p[:-1]) if p.endswith("*") else value == p for p in patterns)


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
    elif kind == "hf":
        repo = model[len("hf://") :].strip("/")
        if repo.count("/") != 1 or not all(repo.split("/")):
            problems.append(Problem("spec.model.source", f"write hf://ORG/NAME (got {model!r})"))
    else:
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
