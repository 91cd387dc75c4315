"""The operator on a real control plane with kwok GPU nodes.

Pods on kwok nodes run only in name: a test ends one as its kubelet would (exit code
and termination message in the pod status), and the Job controller, the scheduler, the
garbage collector and the operator react for real. Namespaces enforce the restricted
Pod Security Standard, so every trainer pod the operator builds is checked by it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from kubetune.api.contract import TerminationMessage
from tests.ground.cluster import Cluster, wait_for
from tests.integration.operator_support import (
    ROOT,
    OperatorProcess,
    create,
    end_pod,
    get,
    install_crds,
    jobs,
    load_documents,
    patch_spec,
    pods,
    running_pod,
    tuningjob,
    wait_events,
    wait_phase,
)


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    install_crds(cluster)


@pytest.fixture(scope="module")
def ns(namespace_factory: Callable[..., str], crds: None) -> str:
    return namespace_factory("op")


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, gpu_nodes: object, ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    replica = OperatorProcess(
        cluster, tmp_path_factory.mktemp("operator"), [ns], lease_namespace=ns
    ).start()
    yield replica
    replica.stop()


# --- what the API server rejects (schema and CEL from the typed model) ----------------

BAD_MANIFESTS = [
    # learningRate and epochs are untyped in the CRD ("auto" or a number): the operator's
    # validation refuses a bad one (tests/unit/test_operator_validation.py).
    ({"training": {"batchSize": 0}}, "a whole number from 1 to 4096, or auto"),
    ({"training": {"epoch": 2}}, 'unknown field "spec.training.epoch"'),
    (
        {"dataset": {"source": "s3://d/x", "validation": {"fraction": 0.1, "source": "s3://d/v"}}},
        "set exactly one of fraction (e.g. 0.05) or source",
    ),
    (
        {"method": {"type": "qlora", "baseWeights": "bf16"}},
        "baseWeights must be auto for type qlora",
    ),
    ({"resources": {"memory": "64GB"}}, "must be a positive Kubernetes quantity"),
    ({"resources": {"gpus": 65}}, "spec.resources.gpus: Invalid value: 65"),
    # Bounds of issue 11: refused by the API server, not at run time in the pod.
    ({"training": {"seed": 2**32}}, "spec.training.seed: Invalid value: 4294967296"),
    ({"scheduling": {"queueName": "team a/q"}}, "spec.scheduling.queueName: Invalid value"),
    ({"scheduling": {"queueName": "q" * 64}}, "spec.scheduling.queueName: Too long"),
    ({"model": {"source": "pvc://models/../../etc"}}, "may not contain '..' segments"),
    (
        {"s3": {"endpoint": "https://AKIA:secret@s3.example.com"}},
        "the endpoint URL may not hold credentials",
    ),
]


@pytest.mark.parametrize(("spec", "expected"), BAD_MANIFESTS, ids=[e for _, e in BAD_MANIFESTS])
def test_api_server_rejects_bad_manifests(
    cluster: Cluster, ns: str, spec: dict, expected: str
) -> None:
    body = tuningjob("bad", **spec)
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(body), check=False
    )
    assert result.returncode != 0 and expected in result.stderr, result.stderr


def test_examples_are_accepted_with_defaults_applied(cluster: Cluster, ns: str) -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        cluster.kubectl("apply", "--dry-run=server", "-n", ns, "-f", str(path))
    applied = json.loads(
        cluster.kubectl(
            "apply",
            "--dry-run=server",
            "-n",
            ns,
            "-o",
            "json",
            "-f",
            "-",
            input=json.dumps(tuningjob("defaults")),
        ).stdout
    )
    assert applied["spec"]["training"]["learningRate"] == "auto"
    assert applied["spec"]["method"]["lora"]["targetModules"] == ["all-linear"]
    assert applied["spec"]["dataset"]["validation"] == {"fraction": 0.05}


# --- lifecycle ---------------------------------------------------------------------------


def test_lifecycle_from_pending_to_succeeded(
    cluster: Cluster, ns: str, operator: OperatorProcess
) -> None:
    created = create(cluster, ns, tuningjob("happy", resources={"gpus": 2}))
    (job,) = wait_for(lambda: jobs(cluster, ns, "happy"), what="the Job")
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "TuningJob",
        created["metadata"]["uid"],
        True,
    )
    pod = running_pod(cluster, ns, "happy")
    assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
    status = wait_phase(cluster, ns, "happy", "Running")
    assert status["jobName"] == "happy" and status["startTime"]
    running = next(c for c in status["conditions"] if c["type"] == "Running")
    assert running["status"] == "True" and running["observedGeneration"] == 1

    message = TerminationMessage(
        reason="Succeeded", adapter="s3://adapters/happy/adapter/", metrics={"train_loss": 0.9}
    )
    end_pod(cluster, pod, 0, message.to_json())
    status = wait_phase(cluster, ns, "happy", "Succeeded")
    assert status["output"]["adapter"] == "s3://adapters/happy/adapter/"
    assert status["completionTime"] and status["progress"]["loss"] == "0.9"
    reasons = wait_events(cluster, ns, "happy", "Training", "Succeeded")
    assert reasons[-1] == "Succeeded", reasons
    table = cluster.kubectl("get", "tj", "happy", "-n", ns).stdout
    assert table.split("\n")[0].split() == ["NAME", "PHASE", "PROGRESS", "LOSS", "AGE"]
    assert "Succeeded" in table


def test_more_gpus_than_any_node_has_pends_with_the_schedulers_reason(
    cluster: Cluster, ns: str, operator: OperatorProcess
) -> None:
    create(cluster, ns, tuningjob("greedy", resources={"gpus": 16}))
    status = wait_phase(cluster, ns, "greedy", "Pending", reason="Unschedulable")
    assert "Insufficient nvidia.com/gpu" in status["message"]
    wait_events(cluster, ns, "greedy", "Unschedulable")


@pytest.mark.parametrize(
    ("code", "reason"), [(65, "BadData"), (77, "StorageAccess"), (78, "InvalidSpec")]
)
def test_permanent_exit_codes_fail_at_once_with_the_trainers_words(
    cluster: Cluster, ns: str, operator: OperatorProcess, code: int, reason: str
) -> None:
    name = f"exit-{code}"
    create(cluster, ns, tuningjob(name, runtime={"backoffLimit": 3}))
    said = f"cannot read s3://datasets/dolly.jsonl: exit {code}; fix it and create a new TuningJob"
    end_pod(
        cluster,
        running_pod(cluster, ns, name),
        code,
        TerminationMessage(reason=reason, message=said).to_json(),
    )
    status = wait_phase(cluster, ns, name, "Failed")
    assert (status["reason"], status["message"]) == (reason, said)
    assert len(pods(cluster, ns, name)) == 1, "a permanent failure is not retried"


def test_preemption_is_retried_without_counting(
    cluster: Cluster, ns: str, operator: OperatorProcess
) -> None:
    create(cluster, ns, tuningjob("preempted", runtime={"backoffLimit": 0}))
    first = running_pod(cluster, ns, "preempted")
    checkpoint = "s3://adapters/preempted/checkpoints/step-000010/"
    end_pod(
        cluster, first, 75, TerminationMessage(reason="Preempted", checkpoint=checkpoint).to_json()
    )
    second = wait_for(
        lambda: next(
            (
                p
                for p in pods(cluster, ns, "preempted")
                if p["metadata"]["uid"] != first["metadata"]["uid"]
                and p["status"].get("phase") == "Running"
            ),
            None,
        ),
        timeout=60,
        what="a replacement pod",
    )

    # Running throughout (its trainer ran), so wait for the status of the second pod itself.
    def replacement_reported() -> dict | None:
        status = get(cluster, ns, "preempted").get("status") or {}
        return (
            status if status.get("restarts") == 1 and status.get("reason") == "Training" else None
        )

    status = wait_for(replacement_reported, timeout=60, what="the replacement pod in the status")
    assert status["phase"] == "Running" and status["output"]["checkpoint"] == checkpoint
    end_pod(cluster, second, 0)
    wait_phase(cluster, ns, "preempted", "Succeeded")


def test_suspend_and_resume(cluster: Cluster, ns: str, operator: OperatorProcess) -> None:
    create(cluster, ns, tuningjob("pausable"))
    running_pod(cluster, ns, "pausable")
    patch_spec(cluster, ns, "pausable", {"suspend": True})
    status = wait_phase(cluster, ns, "pausable", "Suspended")
    assert "set it to false to resume" in status["message"]
    assert jobs(cluster, ns, "pausable")[0]["spec"]["suspend"] is True
    wait_for(
        lambda: (
            not [p for p in pods(cluster, ns, "pausable") if p["status"].get("phase") == "Running"]
        ),
        what="the Job controller to delete the pod",
    )
    patch_spec(cluster, ns, "pausable", {"suspend": False})
    running_pod(cluster, ns, "pausable")
    wait_phase(cluster, ns, "pausable", "Running")


def test_spec_is_locked_once_the_job_exists_except_suspend(
    cluster: Cluster, ns: str, operator: OperatorProcess
) -> None:
    create(cluster, ns, tuningjob("locked"))
    wait_for(
        lambda: get(cluster, ns, "locked").get("status", {}).get("jobName"), what="status.jobName"
    )
    with pytest.raises(ApiException) as refused:
        patch_spec(cluster, ns, "locked", {"training": {"epochs": 9}})
    assert refused.value.status == 422
    assert (
        "the spec cannot change once the TuningJob has a Job (status.jobName), except spec.suspend"
        in refused.value.body
    )
    patch_spec(cluster, ns, "locked", {"suspend": True})  # allowed
    wait_phase(cluster, ns, "locked", "Suspended")


def test_kueue_queue_holds_the_job_until_admitted(
    cluster: Cluster, ns: str, operator: OperatorProcess
) -> None:
    create(cluster, ns, tuningjob("queued", scheduling={"queueName": "gpu-queue"}))
    status = wait_phase(cluster, ns, "queued", "Queued")
    assert "'gpu-queue'" in status["message"]
    (job,) = jobs(cluster, ns, "queued")
    assert (
        job["spec"]["suspend"] is True
        and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    )
    assert not pods(cluster, ns, "queued")
    # Kueue admits a workload by un-suspending its Job; the operator must not undo that.
    cluster.batch.patch_namespaced_job("queued", ns, {"spec": {"suspend": False}})
    running_pod(cluster, ns, "queued")
    wait_phase(cluster, ns, "queued", "Running")
    assert jobs(cluster, ns, "queued")[0]["spec"]["suspend"] is False


def test_operator_rejects_what_only_it_can_check_and_accepts_the_fix(
    cluster: Cluster, ns: str, operator: OperatorProcess
) -> None:
    create(cluster, ns, tuningjob("local-path", output={"destination": "/home/me/adapters"}))
    status = wait_phase(cluster, ns, "local-path", "Failed", reason="InvalidSpec")
    assert (
        "spec.output.destination: use an s3://bucket/prefix URI in a cluster" in status["message"]
    )
    assert not jobs(cluster, ns, "local-path") and "jobName" not in status
    # No Job yet: the spec can still be fixed in place, and the operator takes it from there.
    patch_spec(cluster, ns, "local-path", {"output": {"destination": "s3://adapters/local-path/"}})
    wait_for(lambda: jobs(cluster, ns, "local-path"), what="the Job after the fix")
    assert wait_phase(cluster, ns, "local-path", "Running")["observedGeneration"] == 2


def test_deleting_a_tuningjob_removes_its_job_and_pods(
    cluster: Cluster, ns: str, operator: OperatorProcess
) -> None:
    create(cluster, ns, tuningjob("doomed"))
    running_pod(cluster, ns, "doomed")
    cluster.custom.delete_namespaced_custom_object(
        "kubetune.dev", "v1alpha1", ns, "tuningjobs", "doomed"
    )
    wait_for(
        lambda: not jobs(cluster, ns, "doomed") and not pods(cluster, ns, "doomed"),
        timeout=60,
        what="garbage collection of the Job and its pods",
    )


def test_metrics_endpoint(operator: OperatorProcess, ns: str, cluster: Cluster) -> None:
    create(cluster, ns, tuningjob("counted"))
    wait_phase(cluster, ns, "counted", "Running")
    text = operator.metrics()
    assert 'kubetune_operator_tuningjobs{phase="Running"}' in text
    assert "kubetune_operator_reconcile_seconds_bucket" in text
    assert "kubetune_operator_start_latency_seconds_count" in text
    assert 'kubetune_operator_transitions_total{phase="Running",reason="Training"}' in text


# --- restarts and replicas -------------------------------------------------------------


def test_restart_mid_job_creates_no_duplicate_and_resumes_status(
    cluster: Cluster,
    gpu_nodes: object,
    namespace_factory: Callable[..., str],
    crds: None,
    tmp_path: Path,
) -> None:
    ns = namespace_factory("restart")
    first = OperatorProcess(cluster, tmp_path, [ns], lease_namespace=ns, name="first").start()
    create(cluster, ns, tuningjob("survivor"))
    pod = running_pod(cluster, ns, "survivor")
    wait_phase(cluster, ns, "survivor", "Running")
    (job,) = jobs(cluster, ns, "survivor")
    first.stop()
    second = OperatorProcess(cluster, tmp_path, [ns], lease_namespace=ns, name="second").start()
    try:
        end_pod(cluster, pod, 0)
        wait_phase(cluster, ns, "survivor", "Succeeded")
        (same,) = jobs(cluster, ns, "survivor")
        assert same["metadata"]["uid"] == job["metadata"]["uid"]
        transitions = wait_events(cluster, ns, "survivor", "Training", "Succeeded")
        assert transitions.count("Training") == 1, (
            f"no duplicate events after the restart: {transitions}"
        )
    finally:
        second.stop()


def test_two_replicas_one_leader_and_fail_over(
    cluster: Cluster,
    gpu_nodes: object,
    namespace_factory: Callable[..., str],
    crds: None,
    tmp_path: Path,
) -> None:
    ns = namespace_factory("ha")
    leader = OperatorProcess(cluster, tmp_path, [ns], lease_namespace=ns, name="replica-a").start(
        leader=True
    )
    standby = OperatorProcess(cluster, tmp_path, [ns], lease_namespace=ns, name="replica-b").start(
        leader=False
    )
    try:
        lease = cluster.coordination.read_namespaced_lease("kubetune-operator", ns)
        assert lease.spec.holder_identity == "replica-a"
        create(cluster, ns, tuningjob("ha-one"))
        wait_phase(cluster, ns, "ha-one", "Running")
        assert standby.health()["role"] == "standby", (
            "the standby does nothing while the leader lives"
        )
        leader.kill()  # no clean release: the standby must wait out the Lease
        wait_for(
            lambda: standby.health().get("role") == "leader",
            timeout=30,
            what="the standby to take over",
        )
        create(cluster, ns, tuningjob("ha-two"))
        wait_phase(cluster, ns, "ha-two", "Running")
        assert len(jobs(cluster, ns, "ha-one")) == 1
    finally:
        standby.stop()
        leader.stop()


def test_example_manifests_contain_their_secret() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        kinds = [d["kind"] for d in load_documents(path)]
        assert "TuningJob" in kinds and "Secret" in kinds, path


def test_a_finished_job_removed_later_is_not_recreated(
    cluster: Cluster, ns: str, operator: OperatorProcess
) -> None:
    # As ttlSecondsAfterFinished does (at least 60 s after the end; too slow to wait for
    # here, and the TTL controller is Kubernetes' own): the Job goes after the verdict.
    create(cluster, ns, tuningjob("short-lived", runtime={"ttlSecondsAfterFinished": 60}))
    (job,) = wait_for(lambda: jobs(cluster, ns, "short-lived"), what="the Job")
    assert job["spec"]["ttlSecondsAfterFinished"] == 60
    end_pod(cluster, running_pod(cluster, ns, "short-lived"), 0)
    wait_phase(cluster, ns, "short-lived", "Succeeded")
    cluster.batch.delete_namespaced_job("short-lived", ns, propagation_policy="Background")
    wait_for(lambda: not jobs(cluster, ns, "short-lived"), timeout=30, what="the Job to be gone")
    time.sleep(3)  # several reconciles: a finished TuningJob must stay finished, Job or not
    assert not jobs(cluster, ns, "short-lived")
    assert get(cluster, ns, "short-lived")["status"]["phase"] == "Succeeded"


def test_the_api_server_refuses_a_job_ttl_under_a_minute(
    cluster: Cluster, ns: str, crds: None
) -> None:
    with pytest.raises(ApiException) as refused:
        create(cluster, ns, tuningjob("too-short", runtime={"ttlSecondsAfterFinished": 0}))
    assert refused.value.status == 422 and "ttlSecondsAfterFinished" in refused.value.body


def test_kubectl_explain_reads_the_models_descriptions(cluster: Cluster, crds: None) -> None:
    explained = cluster.kubectl("explain", "tuningjob.spec").stdout
    assert "What to tune, on what data, how, and where the adapter goes." in explained
    assert "The base model to tune." in explained
    training = cluster.kubectl("explain", "tuningjob.spec.training.learningRate").stdout
    assert "Peak learning rate of the trained weights, or auto" in training


@pytest.mark.parametrize(
    ("affinity", "expected"),
    [
        (
            {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}
                }
            },
            "nodeSelectorTerms: Required value",
        ),
        (
            {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": "gpu"}
                }
            },
            "cannot unmarshal",
        ),
    ],
    ids=["invalid", "undecodable"],
)
def test_a_job_the_api_server_rejects_fails_the_tuningjob_once(
    cluster: Cluster, ns: str, operator: OperatorProcess, affinity: dict, expected: str
) -> None:
    name = f"bad-affinity-{len(str(affinity)) % 97}"
    create(cluster, ns, tuningjob(name, scheduling={"affinity": affinity}))
    status = wait_phase(cluster, ns, name, "Failed", reason="InvalidSpec")
    assert (
        status["message"].startswith("the Job was rejected by the API server")
        and expected in status["message"]
    )
    assert "jobName" not in status, "no Job: the spec stays editable"
    assert not jobs(cluster, ns, name)


def test_a_job_name_taken_by_someone_else_waits_and_then_proceeds(
    cluster: Cluster, ns: str, operator: OperatorProcess
) -> None:
    squatter = {
        "metadata": {"name": "taken"},
        "spec": {
            "suspend": True,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "x",
                            "image": "busybox",
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                                "runAsNonRoot": True,
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                        }
                    ],
                }
            },
        },
    }
    cluster.batch.create_namespaced_job(ns, squatter)
    create(cluster, ns, tuningjob("taken"))
    status = wait_phase(cluster, ns, "taken", "Pending", reason="JobConflict")
    assert "a Job named 'taken' already exists" in status["message"]
    cluster.batch.delete_namespaced_job("taken", ns, propagation_policy="Foreground")
    wait_phase(cluster, ns, "taken", "Running", timeout=90)
    (job,) = jobs(cluster, ns, "taken")
    assert job["metadata"]["ownerReferences"][0]["kind"] == "TuningJob"
