"""Pure builders: the objects the operator creates for a TuningJob.

`build_job(tuningjob, settings, owner_uid=...)` returns the batch/v1 Job as a dict,
computed only from its arguments: no API calls, no clock, no randomness. The operator
creates exactly this object, `kubetune render` prints it, and unit tests read it.

The pod follows the operator/trainer contract (kubetune/api/contract.py): the whole
TuningJob as JSON in one environment variable, S3 credentials only as Secret
references, the metrics port, the termination message, and exit codes that the Job's
podFailurePolicy maps (permanent ones fail the Job at once, preemption is not a failure).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from kubetune.api.contract import (
    METRICS_PORT,
    METRICS_PORT_NAME,
    PERMANENT_EXIT_CODES,
    PVC_MOUNT_ROOT,
    SCRATCH_DIR_ENV,
    SPEC_ENV,
    TERMINATION_LOG,
    ExitCode,
)
from kubetune.api.locations import pvc_claim
from kubetune.api.v1alpha1 import API_VERSION, KIND, TuningJob
from kubetune.operator.settings import Settings

CONTAINER = "trainer"
COMMAND = ["kubetune", "train", "--from-env"]

# Labels on the Job and its pods. TUNINGJOB_LABEL carries the TuningJob's name (made
# label-safe by `child_name`); the operator finds children by it.
TUNINGJOB_LABEL = "kubetune.dev/tuningjob"
GENERATION_ANNOTATION = "kubetune.dev/spec-generation"
NAME_ANNOTATION = "kubetune.dev/tuningjob-name"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MANAGED_BY = "kubetune-operator"

SCRATCH_MOUNT = "/scratch"
SHM_MOUNT = "/dev/shm"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def child_name(tuningjob_name: str) -> str:
    """The Job's name, and the label value that ties children to their TuningJob.

    Deterministic, so that creating it twice is a conflict rather than a duplicate.
    A TuningJob name may be a 253-character DNS subdomain; Job names end up in pod
    hostnames and label values, which allow 63 characters and no dots: longer or
    dotted names are shortened and suffixed with a hash of the full name.
    """
    if _DNS_LABEL.match(tuningjob_name):
        return tuningjob_name
    digest = hashlib.sha256(tuningjob_name.encode()).hexdigest()[:10]
    stem = re.sub(r"[^a-z0-9-]", "-", tuningjob_name.lower())[:52].strip("-")
    return f"{stem}-{digest}"


def labels(tuningjob_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubetune-trainer",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        TUNINGJOB_LABEL: child_name(tuningjob_name),
    }


def owner_reference(tuningjob: TuningJob, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": tuningjob.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_spec_document(tuningjob: TuningJob, settings: Settings) -> str:
    """The TuningJob as the pod reads it (contract.SPEC_ENV): the stored spec, complete.

    Every field is written out, defaults included, so the run does not change meaning
    if a later trainer image changes a default. Operator-level defaults that the
    trainer needs (the S3 endpoint) are filled in. Null stays null: a null
    dataset.validation means "no validation split", not "the default one".
    """
    spec = tuningjob.spec
    if spec.s3.endpoint is None and settings.s3_endpoint:
        spec = spec.model_copy(
            update={"s3": spec.s3.model_copy(update={"endpoint": settings.s3_endpoint})}
        )
    document = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            k: v
            for k, v in (
                ("name", tuningjob.metadata.name),
                ("namespace", tuningjob.metadata.namespace),
            )
            if v
        },
        "spec": spec.model_dump(by_alias=True, mode="json"),
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def credentials_secret(tuningjob: TuningJob, settings: Settings) -> str | None:
    return tuningjob.spec.s3.credentials_secret or settings.s3_credentials_secret


def build_job(
    tuningjob: TuningJob,
    settings: Settings,
    *,
    owner_uid: str | None = None,
    generation: int | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job that runs `tuningjob`. owner_uid None: no ownerReference (render)."""
    spec = tuningjob.spec
    name = child_name(tuningjob.metadata.name)
    job_labels = labels(tuningjob.metadata.name)
    metadata: dict[str, Any] = {
        "name": name,
        "labels": dict(job_labels),
        "annotations": {NAME_ANNOTATION: tuningjob.metadata.name},
    }
    if tuningjob.metadata.namespace:
        metadata["namespace"] = tuningjob.metadata.namespace
    if generation is not None:
        metadata["annotations"][GENERATION_ANNOTATION] = str(generation)
    if spec.scheduling.queue_name:
        metadata["labels"][QUEUE_LABEL] = spec.scheduling.queue_name
    if owner_uid is not None:
        metadata["ownerReferences"] = [owner_reference(tuningjob, owner_uid)]

    job_spec: dict[str, Any] = {
        # A queued Job starts suspended: Kueue un-suspends it when it admits it.
        "suspend": spec.suspend or bool(spec.scheduling.queue_name),
        "completions": 1,
        "parallelism": 1,
        "backoffLimit": spec.runtime.backoff_limit,
        # A replacement pod starts only once the old one is gone: two trainers must never
        # write checkpoints to the same place at once (and GPUs are not double-booked).
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": pod_failure_policy(),
        "template": {
            "metadata": {
                "labels": dict(job_labels),
                "annotations": {"kubectl.kubernetes.io/default-container": CONTAINER},
            },
            "spec": pod_spec(tuningjob, settings),
        },
    }
    if spec.runtime.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.runtime.active_deadline_seconds
    if spec.runtime.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.runtime.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def pod_failure_policy() -> dict[str, Any]:
    """Permanent trainer failures fail the Job at once; preemption is retried for free."""
    return {
        "rules": [
            {
                # Bad data, storage denied, a spec that cannot work: retrying cannot help.
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": sorted(int(code) for code in PERMANENT_EXIT_CODES),
                },
            },
            {
                # The trainer saved a checkpoint on SIGTERM and stopped: resume, do not count.
                "action": "Ignore",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": [int(ExitCode.PREEMPTED)],
                },
            },
            {
                # Evicted, preempted by the scheduler, node drained: not the trainer's fault.
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ]
    }


def pod_spec(tuningjob: TuningJob, settings: Settings) -> dict[str, Any]:
    spec = tuningjob.spec
    gpus = spec.resources.gpus
    node_selector = {
        **(settings.gpu_node_selector if gpus else {}),
        **spec.scheduling.node_selector,
    }
    tolerations = [
        t.model_dump(by_alias=True, exclude_none=True)
        for t in (settings.gpu_tolerations if gpus else [])
    ]
    tolerations += [
        t.model_dump(by_alias=True, exclude_none=True) for t in spec.scheduling.tolerations
    ]

    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job retries; podFailurePolicy requires Never
        "terminationGracePeriodSeconds": settings.termination_grace_period_seconds,
        "enableServiceLinks": False,
        # The trainer talks to S3, not to the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_group,
            "fsGroup": settings.fs_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container(tuningjob, settings)],
        "volumes": volumes(tuningjob, settings),
    }
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.scheduling.affinity:
        pod["affinity"] = spec.scheduling.affinity
    if spec.scheduling.priority_class_name:
        pod["priorityClassName"] = spec.scheduling.priority_class_name
    if spec.scheduling.runtime_class_name:
        pod["runtimeClassName"] = spec.scheduling.runtime_class_name
    if spec.runtime.service_account_name:
        pod["serviceAccountName"] = spec.runtime.service_account_name
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    return pod


def container(tuningjob: TuningJob, settings: Settings) -> dict[str, Any]:
    spec = tuningjob.spec
    resources = spec.resources
    cpu = resources.cpu or settings.default_cpu
    memory = resources.memory or settings.default_memory
    requests: dict[str, Any] = {
        "cpu": cpu,
        "memory": memory,
        "ephemeral-storage": resources.ephemeral_storage or settings.default_ephemeral_storage,
    }
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if resources.gpus:
        requests[settings.gpu_resource_name] = resources.gpus
        limits[settings.gpu_resource_name] = resources.gpus

    out: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.runtime.image or settings.trainer_image,
        "command": list(COMMAND),
        "env": environment(tuningjob, settings),
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": volume_mounts(tuningjob),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "terminationMessagePath": TERMINATION_LOG,
        # A crash before the trainer could write its message still says something.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pull_policy = spec.runtime.image_pull_policy or settings.trainer_image_pull_policy
    if pull_policy:
        out["imagePullPolicy"] = pull_policy
    return out


def environment(tuningjob: TuningJob, settings: Settings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": SPEC_ENV, "value": pod_spec_document(tuningjob, settings)},
        {"name": SCRATCH_DIR_ENV, "value": SCRATCH_MOUNT},
        # The root filesystem is read-only: caches (Hugging Face, torch) and temporary
        # files go to the scratch volume.
        {"name": "HOME", "value": f"{SCRATCH_MOUNT}/home"},
        {"name": "TMPDIR", "value": SCRATCH_MOUNT},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    secret = credentials_secret(tuningjob, settings)
    if secret:
        # Credentials travel as references only: their values never appear in any object.
        for key, optional in (
            ("AWS_ACCESS_KEY_ID", False),
            ("AWS_SECRET_ACCESS_KEY", False),
            ("AWS_SESSION_TOKEN", True),
        ):
            ref: dict[str, Any] = {"name": secret, "key": key}
            if optional:
                ref["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def volumes(tuningjob: TuningJob, settings: Settings) -> list[dict[str, Any]]:
    resources = tuningjob.spec.resources
    out: list[dict[str, Any]] = [
        {
            "name": "scratch",
            "emptyDir": {"sizeLimit": resources.scratch_size or settings.default_scratch_size},
        },
        # Memory-backed /dev/shm: the container runtime's default 64Mi starves data loaders and NCCL.
        {
            "name": "dshm",
            "emptyDir": {
                "medium": "Memory",
                "sizeLimit": resources.shm_size or settings.default_shm_size,
            },
        },
    ]
    for name, claim in pvc_volumes(tuningjob):
        out.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
    return out


def pvc_volumes(tuningjob: TuningJob) -> list[tuple[str, str]]:
    """(volume name, claim) for every PersistentVolumeClaim the spec reads from, once each.

    The model's claim is the volume "model"; other claims (datasets on a PVC) are
    "data-0", "data-1", ... (claim names can be longer than a volume name may be).
    """
    spec = tuningjob.spec
    sources = [spec.dataset.source] + [
        held.source
        for held in (spec.dataset.validation, spec.dataset.test)
        if held is not None and held.source is not None
    ]
    model_claim = pvc_claim(spec.model.source)
    volumes = [("model", model_claim)] if model_claim else []
    for claim in dict.fromkeys(c for c in map(pvc_claim, sources) if c):
        if claim != model_claim:
            volumes.append((f"data-{len(volumes) - bool(model_claim)}", claim))
    return volumes


def volume_mounts(tuningjob: TuningJob) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "scratch", "mountPath": SCRATCH_MOUNT},
        {"name": "dshm", "mountPath": SHM_MOUNT},
    ]
    for name, claim in pvc_volumes(tuningjob):
        mounts.append({"name": name, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True})
    return mounts
