"""End to end: `kubectl apply` of a TuningJob runs the real trainer to Succeeded.

The operator (a real `kubetune operator` process) builds the Job; the control plane
schedules its pod on the local node, which runs the container's command (`kubetune
train --from-env`) as a local process with the pod's environment: the TuningJob JSON,
the S3 credentials resolved from the Secret, the scratch volume. The trainer trains a
tiny Llama with QLoRA on a Dolly subset from the real S3 server, serves its metrics,
and writes the adapter to S3 and its termination message; the operator reports
progress while it runs and the adapter's location at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import watch
from urllib3.exceptions import ProtocolError

from tests.ground.cluster import Cluster
from tests.ground.localnode import LocalNode
from tests.ground.s3 import S3Endpoint
from tests.integration.operator_support import GROUP, PLURAL, VERSION, OperatorProcess, install_crds
from tests.support.data import DOLLY
from tests.support.tiny import save_tiny

# A phase may stay or move forward along this order, never back (Pending → Running → end).
PHASE_ORDER = {"Pending": 0, "Running": 1, "Succeeded": 2, "Failed": 2}
# Enough steps for training (about 2 s here) to outlast several of the operator's
# progress reads, 0.25 s apart in this test; 8 steps took under a second, and the reads
# could miss them all.
STEPS = 40


class StatusRecorder:
    """Every status of one TuningJob, from a watch: each write the operator makes is seen,
    however short-lived (polling could miss a phase that lasts less than its interval)."""

    def __init__(self, cluster: Cluster, namespace: str, name: str):
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.seen: list[dict[str, Any]] = []
        self._watch = watch.Watch()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._resource_version = ""

    def start(self) -> StatusRecorder:
        # Watch from the collection's version as of now, before the TuningJob exists, so
        # that no write is missed however late the thread opens its watch.
        listing = self.cluster.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL
        )
        self._resource_version = listing["metadata"]["resourceVersion"]
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopped.is_set():  # a watch the server ends is opened again
            try:
                for event in self._watch.stream(
                    self.cluster.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    field_selector=f"metadata.name={self.name}",
                    timeout_seconds=60,
                    resource_version=self._resource_version,
                ):
                    self._resource_version = event["object"]["metadata"]["resourceVersion"]
                    self.seen.append(event["object"].get("status") or {})
            except ProtocolError:  # the connection closed mid-stream
                continue

    def final(self) -> dict[str, Any] | None:
        return next(
            (s for s in reversed(self.seen) if s.get("phase") in ("Succeeded", "Failed")), None
        )

    def latest(self) -> dict[str, Any]:
        return self.seen[-1] if self.seen else {}

    def phases(self) -> list[str]:
        phases: list[str] = []
        for status in self.seen:
            if status.get("phase") and (not phases or phases[-1] != status["phase"]):
                phases.append(status["phase"])
        return phases


def test_kubectl_apply_trains_to_succeeded_with_progress_and_adapter_in_s3(
    cluster: Cluster,
    local_node: LocalNode,
    s3_server: S3Endpoint,
    s3_bucket: str,
    namespace_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    install_crds(cluster)
    ns = namespace_factory("e2e")
    tiny_model = save_tiny(tmp_path / "tiny-llama")
    s3 = s3_server.client()
    for path in sorted(p for p in tiny_model.rglob("*") if p.is_file()):
        s3.upload_file(str(path), s3_bucket, f"models/tiny/{path.relative_to(tiny_model)}")
    subset = "".join(DOLLY.read_text().splitlines(keepends=True)[:160])
    s3.put_object(Bucket=s3_bucket, Key="data/dolly.jsonl", Body=subset.encode())

    credentials = s3_server.env()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3-credentials"},
        "type": "Opaque",
        "stringData": {k: credentials[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
    }
    tuningjob = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TuningJob",
        "metadata": {"name": "dolly-tiny"},
        "spec": {
            "model": {"source": f"s3://{s3_bucket}/models/tiny/"},
            "dataset": {
                "source": f"s3://{s3_bucket}/data/dolly.jsonl",
                "format": "dolly",
                "validation": {"fraction": 0.1},
            },
            "method": {"type": "qlora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "training": {
                "maxSteps": STEPS,
                "learningRate": 5e-3,
                "batchSize": 2,
                "gradientAccumulation": 1,
                "maxSeqLength": 256,
                "warmupRatio": 0.0,
                "evalEvery": STEPS // 2,
                "checkpointEvery": STEPS // 2,
                "logEvery": 1,
            },
            "output": {"destination": f"s3://{s3_bucket}/out/"},
            "s3": {**s3_server.spec(), "credentialsSecret": "s3-credentials"},
            "resources": {
                "gpus": 0,
                "cpu": "1",
                "memory": "4Gi",
                "ephemeralStorage": "1Gi",
                "scratchSize": "2Gi",
                "shmSize": "256Mi",
            },
            "scheduling": {
                "nodeSelector": local_node.node_selector,
                "tolerations": local_node.tolerations,
            },
            "runtime": {"backoffLimit": 0},
        },
    }
    manifest = tmp_path / "tuningjob.yaml"
    manifest.write_text(yaml.safe_dump_all([secret, tuningjob], sort_keys=False))

    operator = OperatorProcess(
        cluster, tmp_path, [ns], lease_namespace=ns, progress_interval_seconds=0.25
    ).start()
    statuses = StatusRecorder(cluster, ns, "dolly-tiny").start()
    try:
        cluster.kubectl("apply", "-n", ns, "-f", str(manifest))
        deadline = time.monotonic() + 600
        while statuses.final() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        status = statuses.final() or statuses.latest()
        pod_logs = "\n".join(
            local_node.pod_log(ns, p.metadata.name)
            for p in cluster.core.list_namespaced_pod(ns).items
        )
        assert status.get("phase") == "Succeeded", (
            f"status: {status}\ntrainer:\n{pod_logs[-4000:]}\noperator:\n{operator.log()}"
        )
    finally:
        statuses.stop()
        operator.stop()
        operator_log = operator.log()

    # Every status the operator wrote, as a watch delivered it: the phase never goes back.
    phases = statuses.phases()
    assert phases[0] == "Pending" and "Running" in phases, phases
    assert [PHASE_ORDER[p] for p in phases] == sorted(PHASE_ORDER[p] for p in phases), (
        f"the phase went back: {phases}"
    )
    progress_seen = [
        s["progress"]
        for s in statuses.seen
        if s.get("phase") == "Running" and (s.get("progress") or {}).get("step")
    ]
    # While the trainer loads there is nothing to show, and nothing is written.
    empty = [
        s["progress"]
        for s in statuses.seen
        if s.get("progress") and s["progress"].get("step") is None
    ]
    assert not empty, f"progress written before the trainer had a step: {empty}"
    assert progress_seen, (
        f"the operator read the trainer's progress while it ran: {statuses.seen}\n{operator_log}"
    )
    assert progress_seen[-1]["totalSteps"] == STEPS and progress_seen[-1]["summary"].endswith("%)")
    adapter = status["output"]["adapter"]
    assert adapter.startswith(f"s3://{s3_bucket}/out/adapter")
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="out/adapter")["Contents"]
    ]
    assert any(k.endswith("adapter_config.json") for k in keys) and any(
        k.endswith(".safetensors") for k in keys
    ), keys
    assert status["progress"]["summary"] == f"{STEPS}/{STEPS} (100%)"
    table = cluster.kubectl("get", "tuningjobs", "-n", ns).stdout
    assert "dolly-tiny" in table and "Succeeded" in table
