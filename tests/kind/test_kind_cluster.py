"""The real path, in a kind cluster built offline: what users run, in real pods.

The test ground (tests/integration, tests/e2e) covers the operator's fine-grained cases
quickly, with the trainer run as a host process; here the same paths run for real: the
node image built from Go modules (hack/kind/build-node-image.sh), kind's kubelet and
containerd, the chart's Deployment running the operator image under its ServiceAccount,
the trainer image in a pod on the worker under the restricted Pod Security Standard, the
in-cluster SeaweedFS. Each test gets a fresh restricted namespace.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.kind.conftest import ROOT, SETUP_TIMEOUT, KindCluster

pytestmark = pytest.mark.timeout(SETUP_TIMEOUT)

WORKER = "kubetune-test-worker"


def tuningjob(name: str, steps: int, **spec: Any) -> dict[str, Any]:
    """A TuningJob on the tiny model and the Dolly sample that hack/kind-up.sh uploaded."""
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TuningJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "s3://kubetune/models/tiny/"},
            "dataset": {"source": "s3://kubetune/datasets/dolly-sample.jsonl", "format": "dolly"},
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "training": {
                "maxSteps": steps,
                "batchSize": 2,
                "maxSeqLength": 128,
                "checkpointEvery": 10,
                "logEvery": 1,
            },
            "output": {"destination": f"s3://kubetune/tests/{name}/"},
            "s3": {"addressingStyle": "path"},
            "resources": {
                "gpus": 0,
                "cpu": "500m",
                "memory": "2Gi",
                "ephemeralStorage": "1Gi",
                "scratchSize": "1Gi",
                "shmSize": "128Mi",
            },
            "runtime": {"backoffLimit": 0},
            **spec,
        },
    }


def trainer_pods(kind: KindCluster, ns: str, name: str) -> list[dict[str, Any]]:
    return kind.get("pods", "-n", ns, "-l", f"job-name={name}")["items"]


def test_nodes_are_ready_and_coredns_runs(kind_cluster: KindCluster) -> None:
    nodes = kind_cluster.get("nodes")["items"]
    ready = {
        n["metadata"]["name"]: next(
            c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready"
        )
        for n in nodes
    }
    assert ready == {"kubetune-test-control-plane": "True", WORKER: "True"}, ready
    (worker,) = [n for n in nodes if n["metadata"]["name"] == WORKER]
    assert worker["metadata"]["labels"]["kubetune.dev/pool"] == "training"
    coredns = kind_cluster.get("pods", "-n", "kube-system", "-l", "k8s-app=kube-dns")["items"]
    assert coredns and all(p["status"]["phase"] == "Running" for p in coredns), coredns
    # A name resolves through CoreDNS from a pod (the operator's) on the cluster network.
    operator = kind_cluster.get("pods", "-n", "kubetune-system")["items"][0]["metadata"]["name"]
    resolved = kind_cluster.kubectl(
        "exec",
        "-n",
        "kubetune-system",
        operator,
        "--",
        "python",
        "-c",
        "import socket; print(socket.gethostbyname('seaweedfs.storage.svc.cluster.local'))",
    )
    service_ip = kind_cluster.get("service", "seaweedfs", "-n", "storage")["spec"]["clusterIP"]
    assert resolved.strip() == service_ip


def test_operator_runs_from_its_image_under_its_service_account(
    kind_cluster: KindCluster,
) -> None:
    (deployment,) = kind_cluster.get("deployments", "-n", "kubetune-system")["items"]
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["image"] == "kubetune-operator:dev"
    assert deployment["status"].get("readyReplicas") == 1
    (pod,) = kind_cluster.get("pods", "-n", "kubetune-system")["items"]
    assert pod["spec"]["serviceAccountName"] == pod_spec["serviceAccountName"] != "default"
    assert pod["status"]["containerStatuses"][0]["ready"] is True


def test_make_kind_up_trains_to_succeeded_on_the_worker(
    kind_cluster: KindCluster, kind_up_env: dict[str, str]
) -> None:
    """The walkthrough itself: hack/kind-up.sh applies its TuningJob and follows it."""
    result = subprocess.run(
        [str(ROOT / "hack" / "kind-up.sh")],
        env={**kind_up_env, "WAIT": "1", "TIMEOUT": "900"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert f"Succeeded on node {WORKER}" in output, output[-3000:]
    assert "adapter_config.json" in output
    status = kind_cluster.tuningjob_status("tuning", "smollm-dolly")
    assert status["phase"] == "Succeeded"
    assert status["progress"]["summary"].endswith("(100%)")
    # `kubectl get tuningjobs -w` showed it running with its progress before the end.
    rows = [line for line in result.stdout.splitlines() if line.startswith("smollm-dolly")]
    assert any("Running" in row for row in rows), rows
    assert rows[-1].split()[1] == "Succeeded", rows


def test_an_image_that_cannot_be_found_shows_its_reason_in_the_status(
    kind_cluster: KindCluster,
) -> None:
    ns = kind_cluster.namespace("noimage")
    try:
        kind_cluster.apply(
            ns,
            tuningjob(
                "noimage",
                4,
                runtime={
                    "image": "kubetune-trainer:never-built",
                    "imagePullPolicy": "Never",
                    "backoffLimit": 0,
                },
            ),
        )
        status = kind_cluster.wait_status(
            ns,
            "noimage",
            lambda s: s.get("reason") == "ErrImageNeverPull",
            timeout=180,
            what="ErrImageNeverPull in the status",
        )
        # The Validating step's pod runs the same image, so the missing image shows there,
        # before any GPU is requested.
        assert status["phase"] == "Validating"
        assert "kubetune-trainer:never-built" in status["message"]
        events = kind_cluster.kubectl(
            "get", "events", "-n", ns, "--field-selector", "involvedObject.kind=TuningJob"
        )
        assert "ErrImageNeverPull" in events, events
    finally:
        kind_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_preemption_checkpoints_and_resumes_in_a_new_pod(kind_cluster: KindCluster) -> None:
    ns = kind_cluster.namespace("preempt")
    try:
        kind_cluster.apply(ns, tuningjob("preempted", 16))
        kind_cluster.wait_status(
            ns,
            "preempted",
            lambda s: (s.get("progress") or {}).get("step", 0) >= 1,
            timeout=300,
            what="training progress",
        )
        (first,) = trainer_pods(kind_cluster, ns, "preempted")
        # What preemption, eviction and a drain do: delete the pod with its grace period.
        # The kubelet sends SIGTERM; the trainer checkpoints and exits 75 (Preempted).
        kind_cluster.kubectl("delete", "pod", "-n", ns, first["metadata"]["name"], "--wait=false")
        status = kind_cluster.wait_status(
            ns,
            "preempted",
            lambda s: s.get("phase") in ("Succeeded", "Failed"),
            timeout=900,
            what="the end of training",
        )
        assert status["phase"] == "Succeeded", status
        # The Job controller removed the preempted pod; the count of restarts stays.
        assert status.get("restarts") == 1, status
        (second,) = trainer_pods(kind_cluster, ns, "preempted")
        assert second["metadata"]["uid"] != first["metadata"]["uid"]
        # The operator said why the first pod ended (a short-lived status; its Event stays).
        events = kind_cluster.kubectl(
            "get", "events", "-n", ns, "--field-selector", "involvedObject.kind=TuningJob"
        )
        assert "exited with code 75 (Preempted)" in events, events
        # The new pod resumed from the checkpoint the first one saved on SIGTERM.
        log = kind_cluster.kubectl("logs", "-n", ns, second["metadata"]["name"])
        assert "resumed from s3://kubetune/tests/preempted/checkpoints/step-" in log, log[-3000:]
    finally:
        kind_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_suspend_stops_the_pod_and_resume_starts_it_again(kind_cluster: KindCluster) -> None:
    ns = kind_cluster.namespace("suspend")
    try:
        kind_cluster.apply(ns, tuningjob("pausable", 2000))
        kind_cluster.wait_status(
            ns, "pausable", lambda s: s.get("reason") == "Training", timeout=300, what="Running"
        )
        kind_cluster.kubectl(
            "patch", "tuningjob", "pausable", "-n", ns, "--type=merge",
            "-p", '{"spec": {"suspend": true}}',
        )  # fmt: skip
        status = kind_cluster.wait_status(
            ns, "pausable", lambda s: s.get("phase") == "Suspended", timeout=120, what="Suspended"
        )
        assert "set it to false to resume" in status["message"]
        kind_cluster.wait_status(
            ns,
            "pausable",
            lambda _: not trainer_pods(kind_cluster, ns, "pausable"),
            timeout=180,
            what="the trainer pod gone",
        )
        kind_cluster.kubectl(
            "patch", "tuningjob", "pausable", "-n", ns, "--type=merge",
            "-p", '{"spec": {"suspend": false}}',
        )  # fmt: skip
        kind_cluster.wait_status(
            ns,
            "pausable",
            lambda s: s.get("phase") == "Running" and s.get("reason") == "Training",
            timeout=300,
            what="Running again",
        )
    finally:
        kind_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
