"""The Validating step on the real control plane (kwok nodes; pods are ended by hand as
their kubelet would): the GPU Job exists only after the CPU step succeeded, and a bad
dataset fails the TuningJob with the step's message while no GPU Job is ever created."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kubetune.api.contract import TerminationMessage
from tests.ground.cluster import Cluster, wait_for
from tests.integration.operator_support import (
    OperatorProcess,
    create,
    end_pod,
    install_crds,
    jobs,
    pods,
    tuningjob,
    wait_events,
    wait_phase,
)


@pytest.fixture(scope="module")
def ns(cluster: Cluster, namespace_factory: Callable[..., str]) -> str:
    install_crds(cluster)
    return namespace_factory("validating")


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, gpu_nodes: object, ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    replica = OperatorProcess(
        cluster,
        tmp_path_factory.mktemp("operator"),
        [ns],
        lease_namespace=ns,
        validate_data="true",
        validate_cpu="500m",
        validate_memory="1Gi",
        validate_scratch_size="1Gi",
    ).start()
    yield replica
    replica.stop()


def validate_pod(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        return next(
            (
                p
                for p in pods(cluster, ns, name)
                if p["metadata"]["labels"].get("kubetune.dev/stage") == "validate"
                and p["status"].get("phase") == "Running"
            ),
            None,
        )

    return wait_for(running, timeout=60, what=f"the Validating step's pod of {name}")


def test_bad_data_fails_before_any_gpu_job(
    cluster: Cluster, ns: str, operator: OperatorProcess
) -> None:
    create(cluster, ns, tuningjob("bad-data"))
    status = wait_phase(cluster, ns, "bad-data", "Validating")
    assert status["jobName"] == "bad-data"  # the spec is locked from the first Job on
    pod = validate_pod(cluster, ns, "bad-data")
    assert pod["spec"]["containers"][0]["command"] == ["kubetune", "prepare", "--from-env"]
    assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"]["limits"]
    assert not pod["spec"]["nodeName"].startswith("gpu"), pod["spec"]["nodeName"]
    status = wait_phase(cluster, ns, "bad-data", "Validating", reason="PreparingData")
    assert "no GPU is requested" in status["message"]

    report = "s3://datasets/dolly.jsonl:7: field 'instruction': missing; fix line 7 or set onInvalid: skip"
    end_pod(cluster, pod, 65, TerminationMessage(reason="BadData", message=report).to_json())
    status = wait_phase(cluster, ns, "bad-data", "Failed", reason="BadData")
    assert report in status["message"]
    names = [j["metadata"]["name"] for j in jobs(cluster, ns, "bad-data")]
    assert names == ["bad-data-validate"], names
    assert wait_events(cluster, ns, "bad-data", "BadData")[-1] == "BadData"


def test_the_gpu_job_follows_a_successful_validation(
    cluster: Cluster, ns: str, operator: OperatorProcess
) -> None:
    create(cluster, ns, tuningjob("good-data"))
    pod = validate_pod(cluster, ns, "good-data")
    assert [j["metadata"]["name"] for j in jobs(cluster, ns, "good-data")] == ["good-data-validate"]
    message = TerminationMessage(reason="Validated", message="the data is valid").to_json()
    end_pod(cluster, pod, 0, message)
    gpu_jobs = wait_for(
        lambda: [j for j in jobs(cluster, ns, "good-data") if j["metadata"]["name"] == "good-data"],
        what="the GPU Job after validation",
    )
    container = gpu_jobs[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETUNE_PREPARED"] == "s3://adapters/good-data/prepared/"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    status = wait_phase(cluster, ns, "good-data", "Running", timeout=60)
    assert status["jobName"] == "good-data" and "trainer pod good-data-" in status["message"]
