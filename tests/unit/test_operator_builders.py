"""The Job the operator builds: contract, scheduling, security, failure policy."""

from __future__ import annotations

import json

import pytest

from kubetune.api.contract import METRICS_PORT, SCRATCH_DIR_ENV, SPEC_ENV, ExitCode
from kubetune.api.manifest import parse_tuningjob, parse_tuningjob_json
from kubetune.operator.builders import build_job, child_name, pod_spec_document
from tests.support.sensitive_names import flagged_by
from tests.unit.operator_fixtures import manifest, settings, tuningjob


def _container(job: dict) -> dict:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def _env(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in _container(job)["env"]}


def test_job_is_named_labelled_and_owned_deterministically() -> None:
    tj = tuningjob()
    first = build_job(tj, settings(), owner_uid="uid-1", generation=3)
    assert first == build_job(tj, settings(), owner_uid="uid-1", generation=3)
    assert first["metadata"]["name"] == "dolly" and first["metadata"]["namespace"] == "team-a"
    assert first["metadata"]["labels"]["kubetune.dev/tuningjob"] == "dolly"
    assert first["spec"]["template"]["metadata"]["labels"]["kubetune.dev/tuningjob"] == "dolly"
    assert first["metadata"]["annotations"]["kubetune.dev/spec-generation"] == "3"
    (owner,) = first["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TuningJob",
        "name": "dolly",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert "ownerReferences" not in build_job(tj, settings())["metadata"]


@pytest.mark.parametrize(
    ("name", "expected_prefix"),
    [("dolly", "dolly"), ("team.dolly", "team-dolly-"), ("x" * 80, "x" * 52 + "-")],
)
def test_child_names_fit_labels_and_hostnames(name: str, expected_prefix: str) -> None:
    child = child_name(name)
    assert child.startswith(expected_prefix) and len(child) <= 63 and "." not in child
    assert child == child_name(name)
    if name != "dolly":
        assert child != child_name(name + "y")


RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)


@pytest.mark.parametrize("name", ["dolly", "team.dolly"])
def test_job_and_pods_carry_the_recommended_labels_alike(name: str) -> None:
    """app.kubernetes.io/instance tells one TuningJob's objects from another's."""
    document = manifest(scheduling={"queueName": "gpu-queue"})
    document["metadata"]["name"] = name
    job = build_job(parse_tuningjob(document), settings())
    job_labels = job["metadata"]["labels"]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    for labels in (job_labels, pod_labels):
        assert {k: labels.get(k) for k in RECOMMENDED_LABELS} == {
            "app.kubernetes.io/name": "kubetune-trainer",
            "app.kubernetes.io/instance": child_name(name),
            "app.kubernetes.io/component": "trainer",
            "app.kubernetes.io/part-of": "kubetune",
            "app.kubernetes.io/managed-by": "kubetune-operator",
        }
        assert labels["kubetune.dev/tuningjob"] == child_name(name)
    # The pods carry every label of the Job except Kueue's, which belongs to the Job.
    assert job_labels == {**pod_labels, "kueue.x-k8s.io/queue-name": "gpu-queue"}
    document["metadata"]["name"] = "other"
    other = build_job(parse_tuningjob(document), settings())
    assert (
        other["metadata"]["labels"]["app.kubernetes.io/instance"]
        != job_labels["app.kubernetes.io/instance"]
    )


def test_pod_runs_the_contract_command_with_the_whole_spec() -> None:
    tj = tuningjob(
        training={"epochs": 1, "learningRate": 1e-3},
        dataset={"source": "s3://d/x.jsonl", "validation": None},
    )
    job = build_job(tj, settings(s3_endpoint="http://seaweed:8333"))
    container = _container(job)
    assert container["command"] == ["kubetune", "train", "--from-env"]
    env = _env(job)
    document = parse_tuningjob_json(env[SPEC_ENV]["value"], "env")
    assert document.metadata.name == "dolly" and document.metadata.namespace == "team-a"
    assert document.spec.training.learning_rate == 1e-3
    assert document.spec.dataset.validation is None, (
        "an explicit null must not turn into the default split"
    )
    assert document.spec.s3.endpoint == "http://seaweed:8333", (
        "the operator's default endpoint is filled in"
    )
    assert env[SCRATCH_DIR_ENV]["value"] == "/scratch"
    assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]
    assert container["ports"] == [
        {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}
    ]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_credentials_travel_only_as_secret_references() -> None:
    job = build_job(tuningjob(), settings())
    env = _env(job)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert "value" not in env[key]
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "s3-credentials"
        assert env[key]["valueFrom"]["secretKeyRef"]["key"] == key
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    # What security linters take for a credential comes only from a Secret (kube-linter's
    # env-var-secret and kubescape look at literal values only; boto3 needs these names).
    assert [n for n, e in env.items() if "value" in e and flagged_by(n)] == []
    assert {n for n in env if flagged_by(n)} == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    }
    # The operator's default Secret applies when the spec names none; no Secret: no AWS_* at all.
    default = build_job(tuningjob(s3={}), settings(s3_auth_ref="shared-s3"))
    assert _env(default)["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "shared-s3"
    assert not any(k.startswith("AWS_") for k in _env(build_job(tuningjob(s3={}), settings())))


def test_gpu_resources_and_gpu_pool_scheduling() -> None:
    tj = tuningjob(
        resources={"gpus": 2, "memory": "80Gi", "cpu": "16"},
        scheduling={
            "nodeSelector": {"gpu-model": "h100"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
            ],
            "priorityClassName": "training",
            "runtimeClassName": "nvidia",
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}
                }
            },
        },
    )
    config = settings(
        gpu_resource_name="nvidia.com/mig-3g.40gb",
        gpu_node_selector={"pool": "gpu", "gpu-model": "a100"},
    )
    job = build_job(tj, config)
    pod = job["spec"]["template"]["spec"]
    resources = _container(job)["resources"]
    assert (
        resources["limits"]["nvidia.com/mig-3g.40gb"] == 2
        and resources["requests"]["nvidia.com/mig-3g.40gb"] == 2
    )
    assert resources["limits"]["memory"] == "80Gi" and resources["requests"]["cpu"] == "16"
    assert pod["nodeSelector"] == {"pool": "gpu", "gpu-model": "h100"}, (
        "the spec wins over the operator default"
    )
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["priorityClassName"] == "training" and pod["runtimeClassName"] == "nvidia"
    assert "nodeAffinity" in pod["affinity"]


def test_cpu_only_job_gets_no_gpu_or_gpu_pool_defaults() -> None:
    job = build_job(
        tuningjob(resources={"gpus": 0, "cpu": "2", "memory": "8Gi"}),
        settings(gpu_node_selector={"pool": "gpu"}),
    )
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in _container(job)["resources"]["limits"]
    assert "nodeSelector" not in pod and "tolerations" not in pod


def test_operator_defaults_fill_unset_resources_and_volumes() -> None:
    config = settings(
        default_cpu="4",
        default_memory="32Gi",
        default_ephemeral_storage="20Gi",
        default_scratch_size="30Gi",
        default_shm_size="2Gi",
    )
    job = build_job(tuningjob(), config)
    resources = _container(job)["resources"]
    assert resources["requests"] == {
        "cpu": "4",
        "memory": "32Gi",
        "ephemeral-storage": "20Gi",
        "nvidia.com/gpu": 1,
    }
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["scratch"]["emptyDir"] == {"sizeLimit": "30Gi"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}


def test_pod_passes_the_restricted_pod_security_standard() -> None:
    pod = build_job(tuningjob(), settings())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] != 0
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "add" not in context["capabilities"]
    allowed = {
        "emptyDir",
        "persistentVolumeClaim",
        "secret",
        "configMap",
        "projected",
        "downwardAPI",
        "ephemeral",
        "csi",
    }
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= allowed, volume
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))


def test_failure_policy_fails_fast_on_permanent_codes_and_ignores_preemption() -> None:
    job = build_job(
        tuningjob(
            runtime={
                "backoffLimit": 5,
                "activeDeadlineSeconds": 3600,
                "ttlSecondsAfterFinished": 600,
            }
        ),
        settings(),
    )
    spec = job["spec"]
    assert (
        spec["backoffLimit"] == 5
        and spec["activeDeadlineSeconds"] == 3600
        and spec["ttlSecondsAfterFinished"] == 600
    )
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["podReplacementPolicy"] == "Failed"
    fail, ignore_preempted, ignore_disruption = spec["podFailurePolicy"]["rules"]
    assert fail["action"] == "FailJob"
    assert set(fail["onExitCodes"]["values"]) == {
        ExitCode.BAD_DATA,
        ExitCode.STORAGE_ACCESS,
        ExitCode.INVALID_CONFIG,
    }
    assert ignore_preempted == {
        "action": "Ignore",
        "onExitCodes": {
            "containerName": "trainer",
            "operator": "In",
            "values": [ExitCode.PREEMPTED],
        },
    }
    assert ignore_disruption["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]


def test_suspend_and_kueue_queue() -> None:
    assert build_job(tuningjob(), settings())["spec"]["suspend"] is False
    assert build_job(tuningjob(suspend=True), settings())["spec"]["suspend"] is True
    queued = build_job(tuningjob(scheduling={"queueName": "gpu-queue"}), settings())
    assert queued["spec"]["suspend"] is True, "Kueue admits a Job by un-suspending it"
    assert queued["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert "kueue.x-k8s.io/queue-name" not in queued["spec"]["template"]["metadata"]["labels"]


def test_pvc_model_is_mounted_read_only_where_the_contract_says() -> None:
    job = build_job(tuningjob(model={"source": "pvc://models/llama-3.1-8b"}), settings())
    pod = job["spec"]["template"]["spec"]
    assert {
        "name": "model",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    } in pod["volumes"]
    assert {"name": "model", "mountPath": "/mnt/pvc/models", "readOnly": True} in _container(job)[
        "volumeMounts"
    ]


def test_image_and_pull_settings() -> None:
    config = settings(
        trainer_image="registry.local/trainer:1",
        trainer_image_pull_policy="IfNotPresent",
        image_pull_auth_refs=["regcred"],
    )
    job = build_job(tuningjob(), config)
    assert _container(job)["image"] == "registry.local/trainer:1"
    assert _container(job)["imagePullPolicy"] == "IfNotPresent"
    assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    own = build_job(
        tuningjob(
            runtime={
                "image": "mine:2",
                "imagePullPolicy": "Always",
                "serviceAccountName": "trainer",
            }
        ),
        config,
    )
    assert _container(own)["image"] == "mine:2" and _container(own)["imagePullPolicy"] == "Always"
    assert own["spec"]["template"]["spec"]["serviceAccountName"] == "trainer"


def test_spec_document_is_json_without_credentials() -> None:
    document = json.loads(pod_spec_document(tuningjob(), settings()))
    assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
    text = json.dumps(document).lower()
    assert "secret" not in text.replace("credentialssecret", "").replace("accesssecret", "")


def test_pvc_datasets_are_mounted_read_only_once_per_claim() -> None:
    job = build_job(
        tuningjob(
            model={"source": "pvc://models/llama-3.1-8b"},
            dataset={
                "source": "pvc://team-data/emails/train.jsonl",
                "validation": {"source": "pvc://team-data/emails/validation.jsonl"},
                "test": {"source": "pvc://models/eval/test.jsonl"},
            },
        ),
        settings(),
    )
    claims = [
        (v["name"], v["persistentVolumeClaim"]["claimName"])
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == [("model", "models"), ("data-0", "team-data")]
    assert {"name": "data-0", "mountPath": "/mnt/pvc/team-data", "readOnly": True} in _container(
        job
    )["volumeMounts"]
