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
    CA_BUNDLE_DIR,
    CA_BUNDLE_ENV,
    CA_BUNDLE_FILE,
    HF_TOKEN_KEY,
    METRICS_PORT,
    METRICS_PORT_NAME,
    PERMANENT_EXIT_CODES,
    PREPARED_ENV,
    PVC_MOUNT_ROOT,
    SCRATCH_DIR_ENV,
    SPEC_ENV,
    TERMINATION_LOG,
    ExitCode,
    OutputLayout,
)
from kubetune.api.locations import pvc_claim
from kubetune.api.v1alpha1 import API_VERSION, KIND, TuningJob
from kubetune.operator.settings import Settings

CONTAINER = "trainer"
COMMAND = ["kubetune", "train", "--from-env"]
# The Validating step (phase Validating): the same image and environment, on CPU.
VALIDATE_COMMAND = ["kubetune", "prepare", "--from-env"]
# On the Validating step's Job and pod; the GPU Job has none.
STAGE_LABEL = "kubetune.dev/stage"
VALIDATE_STAGE = "validate"

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


def validate_job_name(tuningjob_name: str) -> str:
    """The Validating step's Job: deterministic too, and distinct from the GPU Job's name."""
    return child_name(f"{child_name(tuningjob_name)}-validate")


def is_validate_job(job: Any) -> bool:
    return ((job.get("metadata") or {}).get("labels") or {}).get(STAGE_LABEL) == VALIDATE_STAGE


def labels(tuningjob_name: str) -> dict[str, str]:
    """The Job's and its pods' labels: Kubernetes' recommended ones, and the TuningJob's.

    No app.kubernetes.io/version: the image (spec.runtime.image) may be any, so the
    operator cannot know the trainer's version.
    """
    name = child_name(tuningjob_name)
    return {
        "app.kubernetes.io/name": "kubetune-trainer",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/part-of": "kubetune",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        TUNINGJOB_LABEL: name,
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
                # The run's identity: checkpoints and the adapter record it (ownership).
                ("uid", (tuningjob.metadata.model_extra or {}).get("uid")),
            )
            if v
        },
        "spec": spec.model_dump(by_alias=True, mode="json"),
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def credentials_secret(tuningjob: TuningJob, settings: Settings) -> str | None:
    return tuningjob.spec.s3.credentials_secret or settings.s3_auth_ref


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
                "labels": pod_labels(tuningjob, settings),
                "annotations": pod_annotations(tuningjob, settings),
            },
            "spec": pod_spec(tuningjob, settings),
        },
    }
    if spec.runtime.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.runtime.active_deadline_seconds
    if spec.runtime.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.runtime.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def build_validate_job(
    tuningjob: TuningJob,
    settings: Settings,
    *,
    owner_uid: str | None = None,
    generation: int | None = None,
) -> dict[str, Any]:
    """The Validating step's Job: `kubetune prepare --from-env` on CPU, before any GPU.

    Same image, identity and environment as the trainer (so it reads S3 and the model's
    tokenizer as the trainer would); the admin's and the TuningJob's node selector and
    tolerations, none of the GPU pool's, no GPU, no affinity (which usually targets GPU
    nodes); small resources from the operator's settings; not queued (Kueue admits GPU
    Jobs). It fails at once on a permanent exit code, like the trainer.
    """
    job = build_job(tuningjob, settings, owner_uid=owner_uid, generation=generation)
    spec = tuningjob.spec
    job["metadata"]["name"] = validate_job_name(tuningjob.metadata.name)
    job["metadata"]["labels"][STAGE_LABEL] = VALIDATE_STAGE
    job["metadata"]["labels"].pop(QUEUE_LABEL, None)
    job_spec = job["spec"]
    job_spec["suspend"] = spec.suspend
    job_spec["backoffLimit"] = 1
    job_spec["activeDeadlineSeconds"] = settings.validate_deadline_seconds
    job_spec.pop("ttlSecondsAfterFinished", None)
    template = job_spec["template"]
    template["metadata"]["labels"][STAGE_LABEL] = VALIDATE_STAGE
    for key in ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"):
        template["metadata"]["annotations"].pop(key, None)
    pod = template["spec"]
    for key in ("affinity", "runtimeClassName", "nodeSelector", "tolerations"):
        pod.pop(key, None)
    node_selector = {**settings.default_node_selector, **spec.scheduling.node_selector}
    tolerations = [
        t.model_dump(by_alias=True, exclude_none=True)
        for t in [*settings.default_tolerations, *spec.scheduling.tolerations]
    ]
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    pod["volumes"] = [
        {"name": "scratch", "emptyDir": {"sizeLimit": settings.validate_scratch_size}},
        *(v for v in pod["volumes"] if v["name"] not in ("scratch", "dshm")),
    ]
    (container,) = pod["containers"]
    container["command"] = list(VALIDATE_COMMAND)
    container.pop("ports", None)
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "dshm"]
    cpu, memory = settings.validate_cpu, settings.validate_memory
    container["resources"] = {
        "requests": {
            "cpu": cpu,
            "memory": memory,
            "ephemeral-storage": settings.validate_scratch_size,
        },
        "limits": {"cpu": cpu, "memory": memory},
    }
    return job


def pod_labels(tuningjob: TuningJob, settings: Settings) -> dict[str, str]:
    """The admin's default labels, then the TuningJob's, then the operator's own (which
    the API forbids either to set: the operator finds its pods by them)."""
    return {
        **settings.default_pod_labels,
        **tuningjob.spec.runtime.pod_labels,
        **labels(tuningjob.metadata.name),
    }


def pod_annotations(tuningjob: TuningJob, settings: Settings) -> dict[str, str]:
    annotations = {**settings.default_pod_annotations, **tuningjob.spec.runtime.pod_annotations}
    if settings.pod_scrape_annotations:
        # For Prometheus' annotation-based discovery (clusters without the Prometheus Operator).
        annotations |= {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(METRICS_PORT),
            "prometheus.io/path": "/metrics",
        }
    annotations["kubectl.kubernetes.io/default-container"] = CONTAINER
    return annotations


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
        **settings.default_node_selector,
        **(settings.gpu_node_selector if gpus else {}),
        **spec.scheduling.node_selector,
    }
    tolerations = [
        t.model_dump(by_alias=True, exclude_none=True)
        for t in [*settings.default_tolerations, *(settings.gpu_tolerations if gpus else [])]
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
    if settings.image_pull_auth_refs:
        pod["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_auth_refs]
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
    if spec.runtime.env_from:
        out["envFrom"] = [
            source.model_dump(by_alias=True, exclude_none=True) for source in spec.runtime.env_from
        ]
    pull_policy = spec.runtime.image_pull_policy or settings.trainer_image_pull_policy
    if pull_policy:
        out["imagePullPolicy"] = pull_policy
    return out


def environment(tuningjob: TuningJob, settings: Settings) -> list[dict[str, Any]]:
    spec = tuningjob.spec
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
    if spec.model.access_secret:
        # huggingface_hub reads HF_TOKEN: gated and private repositories, as a reference only.
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": spec.model.access_secret, "key": HF_TOKEN_KEY}
                },
            }
        )
    if spec.s3.ca_bundle:
        env.append({"name": CA_BUNDLE_ENV, "value": f"{CA_BUNDLE_DIR}/{CA_BUNDLE_FILE}"})
    if settings.validate_data:
        # Where the Validating step publishes the prepared data, and the trainer takes it.
        prepared = spec.output.destination.rstrip("/") + "/" + OutputLayout.PREPARED
        env.append({"name": PREPARED_ENV, "value": prepared})
    # The admin's defaults, then the TuningJob's own; the API keeps both off the names above.
    own = {var.name for var in spec.runtime.env}
    env += [
        var.model_dump(by_alias=True, exclude_none=True)
        for var in settings.default_env
        if var.name not in own
    ]
    env += [var.model_dump(by_alias=True, exclude_none=True) for var in spec.runtime.env]
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
    ca = tuningjob.spec.s3.ca_bundle
    if ca:
        out.append(
            {
                "name": "s3-ca",
                "configMap": {"name": ca.name, "items": [{"key": ca.key, "path": CA_BUNDLE_FILE}]},
            }
        )
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
    if tuningjob.spec.s3.ca_bundle:
        mounts.append({"name": "s3-ca", "mountPath": CA_BUNDLE_DIR, "readOnly": True})
    return mounts
