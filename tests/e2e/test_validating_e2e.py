"""End to end with the Validating step: the real `kubetune prepare --from-env` runs in a
CPU pod on the local node before the trainer. A good dataset goes Validating → Running →
Succeeded and the trainer takes the published data instead of preparing it again; a bad
one fails the TuningJob with the file and line, and no GPU Job is ever created."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.ground.cluster import Cluster
from tests.ground.localnode import LocalNode
from tests.ground.s3 import S3Endpoint
from tests.integration.operator_support import OperatorProcess, create, get, install_crds, jobs
from tests.support.data import DOLLY
from tests.support.tiny import save_tiny

STEPS = 6


def _tuningjob(name: str, bucket: str, data: str, s3: S3Endpoint, node: LocalNode) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TuningJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": f"s3://{bucket}/models/tiny/"},
            "dataset": {"source": f"s3://{bucket}/{data}", "format": "dolly"},
            "method": {"type": "qlora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "training": {
                "maxSteps": STEPS,
                "batchSize": 2,
                "gradientAccumulation": 1,
                "maxSeqLength": 256,
                "evalEvery": STEPS,
                "checkpointEvery": STEPS,
                "logEvery": 1,
            },
            "output": {"destination": f"s3://{bucket}/{name}/"},
            "s3": {**s3.spec(), "credentialsSecret": "s3-credentials"},
            "resources": {
                "gpus": 0,
                "cpu": "1",
                "memory": "4Gi",
                "ephemeralStorage": "1Gi",
                "scratchSize": "2Gi",
                "shmSize": "256Mi",
            },
            "scheduling": {"nodeSelector": node.node_selector, "tolerations": node.tolerations},
            "runtime": {"backoffLimit": 0},
        },
    }


def _final(cluster: Cluster, ns: str, name: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    phases: list[str] = []
    while time.monotonic() < deadline:
        status = get(cluster, ns, name).get("status") or {}
        if status.get("phase") and (not phases or phases[-1] != status["phase"]):
            phases.append(status["phase"])
        if status.get("phase") in ("Succeeded", "Failed"):
            return {**status, "seen": phases}
        time.sleep(0.3)
    raise AssertionError(f"{name} did not finish: {phases}")


def test_validating_step_then_training_and_bad_data_stopped_on_cpu(
    cluster: Cluster,
    local_node: LocalNode,
    s3_server: S3Endpoint,
    s3_bucket: str,
    namespace_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    install_crds(cluster)
    ns = namespace_factory("e2e-validating")
    s3 = s3_server.client()
    model = save_tiny(tmp_path / "tiny-llama")
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        s3.upload_file(str(path), s3_bucket, f"models/tiny/{path.relative_to(model)}")
    lines = DOLLY.read_text().splitlines(keepends=True)[:80]
    s3.put_object(Bucket=s3_bucket, Key="data/dolly.jsonl", Body="".join(lines).encode())
    lines[11] = '{"instruction": "a record cut short"\n'
    s3.put_object(Bucket=s3_bucket, Key="bad/dolly.jsonl", Body="".join(lines).encode())
    credentials = s3_server.env()
    cluster.core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "s3-credentials"},
            "stringData": {
                k: credentials[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            },
        },
    )

    operator = OperatorProcess(
        cluster, tmp_path, [ns], lease_namespace=ns,
        validate_data="true", validate_cpu="1", validate_memory="2Gi", validate_scratch_size="1Gi",
    ).start()  # fmt: skip
    try:
        create(
            cluster, ns, _tuningjob("good", s3_bucket, "data/dolly.jsonl", s3_server, local_node)
        )
        create(cluster, ns, _tuningjob("bad", s3_bucket, "bad/dolly.jsonl", s3_server, local_node))
        good = _final(cluster, ns, "good")
        bad = _final(cluster, ns, "bad")
        logs = {
            p.metadata.name: local_node.pod_log(ns, p.metadata.name)
            for p in cluster.core.list_namespaced_pod(ns).items
        }
    finally:
        operator.stop()

    everything = "\n".join(f"--- {k}\n{v[-3000:]}" for k, v in logs.items())
    assert good["phase"] == "Succeeded", f"{good}\n{everything}\n{operator.log()}"
    assert good["seen"][0] == "Validating" and "Running" in good["seen"], good["seen"]
    trainer_logs = [v for k, v in logs.items() if k.startswith("good-") and "-validate-" not in k]
    assert any("prepared data from the Validating step" in v for v in trainer_logs), everything
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="good/")["Contents"]]
    assert "good/prepare-report.json" in keys and any("good/prepared/" in k for k in keys)

    assert bad["phase"] == "Failed" and bad["reason"] == "BadData", bad
    assert f"s3://{s3_bucket}/bad/dolly.jsonl:12" in bad["message"], bad["message"]
    assert [j["metadata"]["name"] for j in jobs(cluster, ns, "bad")] == ["bad-validate"]
