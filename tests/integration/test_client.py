"""`kubetune status/wait/logs` against the real control plane, through a kubeconfig.

The status is written here through the status subresource, as the operator would:
these tests are about what the client reads and how it exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.ground.cluster import Cluster
from tests.integration.operator_support import (
    GROUP,
    PLURAL,
    ROOT,
    VERSION,
    create,
    install_crds,
    tuningjob,
)


@pytest.fixture(scope="module")
def ns(cluster: Cluster, namespace_factory: Callable[..., str]) -> str:
    install_crds(cluster)
    return namespace_factory("client")


def kubetune(cluster: Cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run(
        [sys.executable, "-m", "kubetune", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
    )  # fmt: skip


def set_status(cluster: Cluster, ns: str, name: str, status: dict) -> None:
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, name, {"status": status}
    )


def test_status_of_a_missing_tuningjob_says_so_and_exits_3(cluster: Cluster, ns: str) -> None:
    result = kubetune(cluster, "status", "nope", "-n", ns)
    assert result.returncode == 3, result
    assert f'TuningJob "nope" not found in namespace "{ns}"' in result.stderr
    assert kubetune(cluster, "wait", "nope", "-n", ns).returncode == 3


def test_status_and_wait_follow_a_run_to_its_end(cluster: Cluster, ns: str) -> None:
    create(cluster, ns, tuningjob("followed"))
    fresh = kubetune(cluster, "status", "followed", "-n", ns)
    assert fresh.returncode == 0 and "not seen by the operator yet" in fresh.stdout, fresh

    set_status(
        cluster, ns, "followed",
        {"phase": "Running", "reason": "Training", "progress": {"step": 3, "totalSteps": 10, "summary": "3/10 (30%)", "loss": "2.5000"}},
    )  # fmt: skip
    running = kubetune(cluster, "status", "followed", "-n", ns)
    assert (
        "Running" in running.stdout
        and "3/10 (30%)" in running.stdout
        and "train 2.5000" in running.stdout
    )

    timed_out = kubetune(cluster, "wait", "followed", "-n", ns, "--timeout", "2")
    assert timed_out.returncode == 4, timed_out
    assert "still Running after 2s" in timed_out.stdout

    # Waiting: it prints where the run is, then how it ended, once the status says so.
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    waiting = subprocess.Popen(
        [sys.executable, "-m", "kubetune", "wait", "followed", "-n", ns, "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert waiting.stderr is not None
    first = waiting.stderr.readline()
    assert first == "followed: Running Training 3/10 (30%)\n", first
    set_status(
        cluster, ns, "followed",
        {"phase": "Succeeded", "reason": "Succeeded", "output": {"adapter": "s3://adapters/followed/adapter/"}},
    )  # fmt: skip
    stdout, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, stdout
    assert "the adapter is at s3://adapters/followed/adapter/" in stdout

    # kubectl's own wait works on the conditions the operator writes.
    set_status(
        cluster, ns, "followed",
        {"conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]},
    )  # fmt: skip
    cluster.kubectl("wait", "--for=condition=Succeeded", "-n", ns, "tj/followed", "--timeout=10s")


def test_wait_exits_1_on_failure_and_logs_says_there_is_no_pod(cluster: Cluster, ns: str) -> None:
    create(cluster, ns, tuningjob("broken"))
    set_status(
        cluster,
        ns,
        "broken",
        {"phase": "Failed", "reason": "BadData", "message": "d.jsonl:3: not JSON"},
    )
    failed = kubetune(cluster, "wait", "broken", "-n", ns)
    assert (
        failed.returncode == 1 and "broken failed (BadData): d.jsonl:3: not JSON" in failed.stdout
    )
    logs = kubetune(cluster, "logs", "broken", "-n", ns)
    assert logs.returncode == 1 and "has no trainer pod yet" in logs.stderr
