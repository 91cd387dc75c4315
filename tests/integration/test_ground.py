"""Smoke tests of the test ground: each proves a part is the real thing.

The API server enforces CRD schemas, RBAC and Pod Security; the scheduler places
GPU pods on kwok's GPU nodes; the garbage collector cascades; the local node runs a
pod's command with its environment and reports its end like a kubelet.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.ground.cluster import Cluster, wait_for
from tests.ground.kwok import KwokNodes
from tests.ground.localnode import LocalNode

# What the restricted Pod Security Standard asks of every container.
RESTRICTED_CONTAINER = {
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
}


def pod_manifest(
    name: str, command: list[str], *, extra: dict[str, Any] | None = None, **container: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": command,
                    **RESTRICTED_CONTAINER,
                    **container,
                }
            ],
            **(extra or {}),
        },
    }


def terminated(cluster: Cluster, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    """The pod's container `terminated` state once the pod has ended."""

    def ended() -> dict[str, Any] | None:
        pod = json.loads(
            cluster.core.read_namespaced_pod(name, namespace, _preload_content=False).data
        )
        if pod["status"].get("phase") in ("Succeeded", "Failed"):
            return pod
        return None

    pod = wait_for(ended, timeout=timeout, what=f"pod {name} to end")
    return {
        "phase": pod["status"]["phase"],
        **pod["status"]["containerStatuses"][0]["state"]["terminated"],
    }


# ---------------------------------------------------------------------------
# API server


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.ground.kubetune.dev"},
    "spec": {
        "group": "ground.kubetune.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_api_server_enforces_crd_schema(cluster: Cluster, namespace: str) -> None:
    try:
        cluster.apiextensions.create_custom_resource_definition(WIDGET_CRD)
    except ApiException as e:
        assert e.status == 409  # installed by an earlier run against the same cluster
    wait_for(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in cluster.apiextensions.read_custom_resource_definition(
                WIDGET_CRD["metadata"]["name"]
            ).status.conditions
            or []
        ),
        what="the Widget CRD to be established",
    )

    def create(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": "ground.kubetune.dev/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": spec,
        }
        return cluster.custom.create_namespaced_custom_object(
            "ground.kubetune.dev", "v1", namespace, "widgets", body
        )

    # Discovery of a new CRD takes a moment: retry the valid create until it is served.
    created = wait_for(
        lambda: create("good", {"size": 3, "colour": "red"}), what="the Widget API to be served"
    )
    assert created["spec"] == {"size": 3}, "unknown fields are pruned by the structural schema"

    with pytest.raises(ApiException) as rejected:
        create("bad", {"size": 0})
    assert rejected.value.status == 422
    assert "spec.size" in rejected.value.body

    with pytest.raises(ApiException) as missing:
        create("empty", {})
    assert missing.value.status == 422
    assert "spec.size: Required value" in missing.value.body


def test_restricted_namespace_rejects_privileged_pod(cluster: Cluster, namespace: str) -> None:
    privileged = pod_manifest("privileged", ["true"], securityContext={"privileged": True})
    with pytest.raises(ApiException) as rejected:
        cluster.core.create_namespaced_pod(namespace, privileged)
    assert rejected.value.status == 403
    assert "violates PodSecurity" in rejected.value.body and "privileged" in rejected.value.body

    # The same pod is admitted where no standard is enforced: the rejection came from PSS.
    relaxed = cluster.create_namespace("relaxed", restricted=False)
    try:
        cluster.core.create_namespaced_pod(relaxed, privileged)
    finally:
        cluster.delete_namespace(relaxed)


def test_rbac_applies_to_service_account_tokens(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    kubeconfig = cluster.kubeconfig_for_service_account(namespace, "reader")

    denied = cluster.kubectl(
        "get", "configmaps", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert denied.returncode != 0
    assert (
        f"system:serviceaccount:{namespace}:reader" in denied.stderr
        and "forbidden" in denied.stderr
    )

    cluster.rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "read-configmaps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    cluster.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "read-configmaps",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    allowed = wait_for(
        lambda: (
            (
                r := cluster.kubectl(
                    "get", "configmaps", "-n", namespace, kubeconfig=kubeconfig, check=False
                )
            ).returncode
            == 0
            and r
        ),
        what="the RoleBinding to take effect",
    )
    assert "kube-root-ca.crt" in allowed.stdout


# ---------------------------------------------------------------------------
# Controllers and scheduler


def test_job_pod_is_scheduled_on_a_kwok_gpu_node(
    cluster: Cluster, gpu_nodes: KwokNodes, namespace: str
) -> None:
    gpu_node = gpu_nodes.gpu_nodes[0]
    container = {
        "name": "train",
        "image": "trainer",
        "command": ["train"],
        "resources": {"limits": {"nvidia.com/gpu": "2"}},
        **RESTRICTED_CONTAINER,
    }
    cluster.batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "gpu-job"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [container],
                        "tolerations": gpu_node.tolerations,
                        "nodeSelector": gpu_nodes.node_selector,
                    }
                },
            },
        },
    )

    def scheduled_pod() -> Any:
        pods = cluster.core.list_namespaced_pod(namespace, label_selector="job-name=gpu-job").items
        return pods[0] if pods and pods[0].spec.node_name else None

    pod = wait_for(scheduled_pod, timeout=60, what="the Job's pod to be scheduled")
    assert pod.spec.node_name in {n.name for n in gpu_nodes.gpu_nodes}
    # kwok plays the node's kubelet: the pod runs (in name).
    wait_for(
        lambda: (
            cluster.core.read_namespaced_pod(pod.metadata.name, namespace).status.phase == "Running"
        ),
        what="the pod to run on the kwok node",
    )


def test_job_pod_without_toleration_stays_off_gpu_nodes(
    cluster: Cluster, gpu_nodes: KwokNodes, namespace: str
) -> None:
    container = {
        "name": "train",
        "image": "trainer",
        "command": ["train"],
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
        **RESTRICTED_CONTAINER,
    }
    cluster.core.create_namespaced_pod(
        namespace, {"metadata": {"name": "untolerated"}, "spec": {"containers": [container]}}
    )

    def unschedulable() -> bool:
        conditions = (
            cluster.core.read_namespaced_pod("untolerated", namespace).status.conditions or []
        )
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

    wait_for(unschedulable, what="the scheduler to report the pod unschedulable")
    assert cluster.core.read_namespaced_pod("untolerated", namespace).spec.node_name is None


def test_deleting_an_owner_garbage_collects_its_children(cluster: Cluster, namespace: str) -> None:
    owner = cluster.core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    cluster.core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                    }
                ],
            }
        },
    )
    cluster.core.delete_namespaced_config_map("owner", namespace)

    def child_gone() -> bool:
        try:
            cluster.core.read_namespaced_config_map("child", namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(child_gone, timeout=60, what="the garbage collector to delete the child")


# ---------------------------------------------------------------------------
# The local node


def test_local_pod_runs_with_its_environment_and_succeeds(
    cluster: Cluster, local_node: LocalNode, namespace: str
) -> None:
    cluster.core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "creds"}, "data": {"token": base64.b64encode(b"s3cr3t").decode()}},
    )
    cluster.core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"mode": "fast", "LEVEL": "debug"}}
    )
    script = (
        'echo "token=$TOKEN mode=$MODE level=$APP_LEVEL"; printf done > "$KUBETUNE_TERMINATION_LOG"'
    )
    pod = pod_manifest(
        "env-pod",
        ["/bin/sh", "-c"],
        args=[script],
        env=[
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        ],
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "APP_"}],
        extra=local_node.scheduling,
    )
    cluster.core.create_namespaced_pod(namespace, pod)

    end = terminated(cluster, namespace, "env-pod")
    assert (end["phase"], end["exitCode"], end["reason"], end["message"]) == (
        "Succeeded",
        0,
        "Completed",
        "done",
    )
    log = local_node.pod_log(namespace, "env-pod")
    assert "token=s3cr3t mode=fast level=debug" in log


def test_local_pod_failure_reports_exit_code_and_log_fallback(
    cluster: Cluster, local_node: LocalNode, namespace: str
) -> None:
    pod = pod_manifest(
        "failing",
        ["/bin/sh", "-c", "echo about to fail; echo 'bad thing happened' >&2; exit 3"],
        terminationMessagePolicy="FallbackToLogsOnError",
        extra=local_node.scheduling,
    )
    cluster.core.create_namespaced_pod(namespace, pod)

    end = terminated(cluster, namespace, "failing")
    assert (end["phase"], end["exitCode"], end["reason"]) == ("Failed", 3, "Error")
    assert end["message"] == "about to fail\nbad thing happened\n"


def test_local_pod_waits_for_a_missing_secret(
    cluster: Cluster, local_node: LocalNode, namespace: str
) -> None:
    pod = pod_manifest(
        "needs-secret",
        ["/bin/sh", "-c", 'test "$KEY" = late'],
        env=[{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "late", "key": "key"}}}],
        extra=local_node.scheduling,
    )
    cluster.core.create_namespaced_pod(namespace, pod)

    def waiting_reason() -> str | None:
        statuses = (
            cluster.core.read_namespaced_pod("needs-secret", namespace).status.container_statuses
            or []
        )
        waiting = statuses[0].state.waiting if statuses else None
        return (
            waiting.reason if waiting and waiting.reason == "CreateContainerConfigError" else None
        )

    wait_for(waiting_reason, what="CreateContainerConfigError")
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "late"}, "stringData": {"key": "late"}}
    )
    assert terminated(cluster, namespace, "needs-secret")["exitCode"] == 0


def test_local_pod_mounts_the_trainer_pods_volumes(
    cluster: Cluster, local_node: LocalNode, namespace: str
) -> None:
    # The trainer's kinds: an emptyDir (scratch) and a read-only configMap with items (the
    # S3 CA bundle).
    cluster.core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "ca"}, "data": {"ca.crt": "PEM"}}
    )
    root = "/tmp/kubetune-ground-test"
    script = (
        f"echo hi > {root}/scratch/out.txt && cat {root}/scratch/out.txt {root}/ca/ca.pem "
        f"&& ! touch {root}/ca/written 2>/dev/null"
    )
    pod = pod_manifest(
        "scratch",
        ["/bin/sh", "-c", script],
        volumeMounts=[
            {"name": "scratch", "mountPath": f"{root}/scratch"},
            {"name": "ca", "mountPath": f"{root}/ca", "readOnly": True},
        ],
        extra={
            **local_node.scheduling,
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {
                    "name": "ca",
                    "configMap": {"name": "ca", "items": [{"key": "ca.crt", "path": "ca.pem"}]},
                },
            ],
        },
    )
    cluster.core.create_namespaced_pod(namespace, pod)

    end = terminated(cluster, namespace, "scratch")
    assert end["exitCode"] == 0, local_node.pod_log(namespace, "scratch")
    folder = local_node.pod_dir(namespace, "scratch")
    assert (folder / "volumes" / "scratch" / "out.txt").read_text() == "hi\n"
    assert not Path(f"{root}/scratch/out.txt").exists(), "the mount was private to the pod"
    assert local_node.pod_log(namespace, "scratch") == "hi\nPEM"


def test_deleting_a_local_pod_stops_it_gracefully(
    cluster: Cluster, local_node: LocalNode, namespace: str
) -> None:
    script = "trap 'echo got SIGTERM; exit 75' TERM; echo started; while true; do sleep 0.1; done"
    pod = pod_manifest(
        "long",
        ["/bin/sh", "-c", script],
        extra={**local_node.scheduling, "terminationGracePeriodSeconds": 20},
    )
    cluster.core.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: cluster.core.read_namespaced_pod("long", namespace).status.phase == "Running",
        what="the pod to run",
    )
    wait_for(lambda: "started" in local_node.pod_log(namespace, "long"), what="the script to start")

    started = time.monotonic()
    cluster.core.delete_namespaced_pod("long", namespace)

    def gone() -> bool:
        try:
            cluster.core.read_namespaced_pod("long", namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(gone, timeout=30, what="the pod to be deleted")
    assert time.monotonic() - started < 15, "SIGTERM ended it; it did not wait for SIGKILL"
    assert "got SIGTERM" in local_node.pod_log(namespace, "long")


def test_local_pod_runs_this_checkouts_kubetune(
    cluster: Cluster, local_node: LocalNode, namespace: str
) -> None:
    from kubetune import __version__

    cluster.core.create_namespaced_pod(
        namespace, pod_manifest("cli", ["kubetune", "--version"], extra=local_node.scheduling)
    )
    assert terminated(cluster, namespace, "cli")["exitCode"] == 0
    assert __version__ in local_node.pod_log(namespace, "cli")


@pytest.mark.parametrize(
    ("exit_code", "condition", "reason"),
    [(0, "Complete", None), (78, "Failed", "PodFailurePolicy")],
)
def test_job_on_the_local_node_ends_by_its_exit_code(
    cluster: Cluster,
    local_node: LocalNode,
    namespace: str,
    exit_code: int,
    condition: str,
    reason: str | None,
) -> None:
    """The path an operator relies on: exit code → pod status → the Job's podFailurePolicy."""
    container = {
        "name": "main",
        "image": "trainer",
        "command": ["/bin/sh", "-c", f"exit {exit_code}"],
        **RESTRICTED_CONTAINER,
    }
    cluster.batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "job"},
            "spec": {
                "backoffLimit": 3,
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "FailJob",
                            "onExitCodes": {
                                "containerName": "main",
                                "operator": "In",
                                "values": [78],
                            },
                        },
                    ]
                },
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "automountServiceAccountToken": False,  # as the trainer's pod
                        "containers": [container],
                        **local_node.scheduling,
                    }
                },
            },
        },
    )

    def finished() -> Any:
        job = cluster.batch.read_namespaced_job("job", namespace)
        return next(
            (
                c
                for c in job.status.conditions or []
                if c.type in ("Complete", "Failed") and c.status == "True"
            ),
            None,
        )

    ended = wait_for(finished, timeout=60, what="the Job to finish")
    assert ended.type == condition
    if reason:
        assert ended.reason == reason
    failed = cluster.batch.read_namespaced_job("job", namespace).status.failed or 0
    assert failed == (1 if exit_code else 0), "one pod, no retries: the exit code decided"


def test_local_node_fails_a_pod_it_cannot_run(
    cluster: Cluster, local_node: LocalNode, namespace: str
) -> None:
    pod = pod_manifest("no-command", [], extra=local_node.scheduling)
    del pod["spec"]["containers"][0]["command"]
    cluster.core.create_namespaced_pod(namespace, pod)

    def failed() -> Any:
        status = cluster.core.read_namespaced_pod("no-command", namespace).status
        return status if status.phase == "Failed" else None

    status = wait_for(failed, what="the pod to fail")
    assert status.reason == "UnsupportedByLocalNode"
    assert "has no command" in status.message
