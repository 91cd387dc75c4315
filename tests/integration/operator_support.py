"""Running the real `kubetune operator` against the test ground, and reading its work.

The operator runs as a separate process (`python -m kubetune operator`), configured
only through its environment, exactly as in a pod: a restart test really restarts it.
Each one watches only its own namespaces, so operators of different tests never meet.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.ground.cluster import Cluster, wait_for
from tests.ground.process import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "kubetune.dev", "v1alpha1", "tuningjobs"


def install_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/tuningjobs.kubetune.dev"
    )


class OperatorProcess:
    """One `kubetune operator` replica."""

    def __init__(
        self,
        cluster: Cluster,
        folder: Path,
        namespaces: list[str],
        *,
        lease_namespace: str,
        kubeconfig: Path | None = None,
        name: str = "operator",
        **settings: Any,
    ):
        self.cluster = cluster
        self.metrics_port, self.health_port = free_port(), free_port()
        environment = {
            "NAMESPACES": ",".join(namespaces),
            "METRICS_PORT": self.metrics_port,
            "HEALTH_PORT": self.health_port,
            "LEASE_NAMESPACE": lease_namespace,
            "LEASE_DURATION_SECONDS": 6,
            "LEASE_RENEW_DEADLINE_SECONDS": 4,
            "LEASE_RETRY_SECONDS": 1,
            "PROGRESS_INTERVAL_SECONDS": 1,
            "RESYNC_SECONDS": 10,
            "TRAINER_IMAGE": "kubetune/trainer:test",
            "DEFAULT_CPU": "1",
            "DEFAULT_MEMORY": "2Gi",
            "DEFAULT_EPHEMERAL_STORAGE": "1Gi",
            "DEFAULT_SCRATCH_SIZE": "1Gi",
            "DEFAULT_SHM_SIZE": "256Mi",
            # Most tests follow the GPU Job alone; the Validating step's own tests turn it on.
            "VALIDATE_DATA": "false",
            **{k.upper(): v for k, v in settings.items()},
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_OPERATOR_")}
        env.update({f"KUBETUNE_OPERATOR_{k}": str(v) for k, v in environment.items()})
        env["KUBECONFIG"] = str(kubeconfig or cluster.kubeconfig)
        env["POD_NAME"] = name
        self.name = name
        self.process = ManagedProcess(
            name,
            [sys.executable, "-m", "kubetune", "-v", "operator"],
            folder / f"{name}.log",
            env=env,
            cwd=ROOT,
        )

    def start(self, *, leader: bool = True) -> OperatorProcess:
        self.process.start()
        role = "leader" if leader else "standby"
        try:
            wait_for(
                lambda: self.health().get("role") == role,
                timeout=60,
                what=f"{self.name} to become {role}",
            )
        except Exception as e:
            raise AssertionError(f"{e}\n{self.name}'s log:\n{self.log()}") from None
        return self

    def stop(self, grace: float = 20.0) -> None:
        self.process.stop(grace=grace)

    def kill(self) -> None:
        self.process.stop(grace=0)

    def log(self) -> str:
        return self.process.log_tail(60)

    def health(self) -> dict[str, Any]:
        self.process.check()
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as response:
                return json.loads(response.read())
        except OSError:
            return {}

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
        ) as response:
            return response.read().decode()


def tuningjob(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TuningJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "s3://models/tiny/"},
            "dataset": {"source": "s3://datasets/dolly.jsonl"},
            "output": {"destination": f"s3://adapters/{name}/"},
            "s3": {"credentialsSecret": "s3-credentials"},
        },
    }
    body["spec"].update(spec)
    return body


def create(cluster: Cluster, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
    return cluster.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, dict(body)
    )


def get(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def patch_spec(
    cluster: Cluster, namespace: str, name: str, spec: Mapping[str, Any]
) -> dict[str, Any]:
    return cluster.custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": dict(spec)}
    )


def wait_phase(
    cluster: Cluster,
    namespace: str,
    name: str,
    phase: str,
    *,
    reason: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = get(cluster, namespace, name).get("status") or {}
        ok = status.get("phase") == phase and (reason is None or status.get("reason") == reason)
        return status if ok else None

    try:
        return wait_for(
            reached,
            timeout=timeout,
            what=f"TuningJob {name} to reach {phase} ({reason or 'any reason'})",
        )
    except AssertionError as e:
        raise AssertionError(
            f"{e}; status now: {json.dumps(get(cluster, namespace, name).get('status'))}"
        ) from None


def pods(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    listed = cluster.core.list_namespaced_pod(
        namespace, label_selector=f"kubetune.dev/tuningjob={name}"
    )
    return [cluster.api.sanitize_for_serialization(p) for p in listed.items]


def jobs(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    listed = cluster.batch.list_namespaced_job(
        namespace, label_selector=f"kubetune.dev/tuningjob={name}"
    )
    return [cluster.api.sanitize_for_serialization(j) for j in listed.items]


def running_pod(cluster: Cluster, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        return next(
            (
                p
                for p in pods(cluster, namespace, name)
                if p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")
            ),
            None,
        )

    return wait_for(running, timeout=timeout, what=f"a running trainer pod of {name}")


def end_pod(cluster: Cluster, pod: Mapping[str, Any], exit_code: int, message: str = "") -> None:
    """End a pod on a kwok node as its kubelet would: the trainer exited with `exit_code`."""
    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    started = (
        ((pod["status"].get("containerStatuses") or [{}])[0].get("state") or {})
        .get("running", {})
        .get("startedAt")
    )
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "message": message,
        "startedAt": started,
        "finishedAt": started,
    }
    status = {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
        "containerStatuses": [
            {
                "name": "trainer",
                "ready": False,
                "restartCount": 0,
                "image": "kubetune/trainer:test",
                "imageID": "",
                "state": {"terminated": terminated},
            }
        ],
    }
    cluster.core.patch_namespaced_pod_status(name, namespace, {"status": status})


def events(cluster: Cluster, namespace: str, name: str) -> list[tuple[str, str]]:
    listed = cluster.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return [
        (e.reason, e.message or "")
        for e in sorted(
            listed.items,
            key=lambda e: e.event_time or e.last_timestamp or e.metadata.creation_timestamp,
        )
    ]


def wait_events(
    cluster: Cluster, namespace: str, name: str, *reasons: str, timeout: float = 30
) -> list[str]:
    """The reasons of a TuningJob's Events in time order, once all of `reasons` are there
    (the operator posts Events in the background, after the status write)."""

    def posted() -> list[str] | None:
        seen = [reason for reason, _ in events(cluster, namespace, name)]
        return seen if set(reasons) <= set(seen) else None

    return wait_for(posted, timeout=timeout, what=f"events {reasons} of {name}")


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
