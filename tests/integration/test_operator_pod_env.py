"""Environment, Secrets and the admin's policy, on the real control plane.

- The API server refuses what the trainer would refuse (schema and CEL from the model).
- A TuningJob outside the operator's allowlists fails with the setting it broke, and no
  Job is ever created.
- An env entry naming a Secret the namespace lacks: the trainer pod, on the local node
  (a stand-in kubelet that resolves env exactly as the pod spec says), waits with
  CreateContainerConfigError, and the TuningJob's status says so in words; a Secret's
  value is nowhere in the Job, the status or the Events.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from tests.ground.cluster import Cluster, wait_for
from tests.ground.localnode import LocalNode
from tests.integration.operator_support import (
    OperatorProcess,
    create,
    events,
    get,
    install_crds,
    jobs,
    tuningjob,
    wait_phase,
)

SENTINEL = "hf_sentinel_value_that_must_never_be_seen"


@pytest.fixture(scope="module")
def ns(cluster: Cluster, namespace_factory: Callable[..., str]) -> str:
    install_crds(cluster)
    return namespace_factory("env")


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    replica = OperatorProcess(
        cluster,
        tmp_path_factory.mktemp("operator"),
        [ns],
        lease_namespace=ns,
        allowed_trainer_images="kubetune/trainer:*",
        allowed_service_accounts="trainer",
    ).start()
    yield replica
    replica.stop()


REFUSED = [
    ({"dataset": {"source": "s3://d/x", "template": "llama-3"}}, "use one of auto, tokenizer"),
    (
        {
            "dataset": {
                "source": "s3://d/x",
                "validation": {"fraction": 0.6},
                "test": {"fraction": 0.4},
            }
        },
        "validation.fraction + test.fraction must be less than 1",
    ),
    (
        {"resources": {"gpus": 0}, "training": {"optimizer": "paged-adamw-8bit"}},
        "need a CUDA GPU, and resources.gpus is 0",
    ),
    (
        {"model": {"source": "s3://m/x/", "accessSecret": "hf"}},
        "accessSecret holds a Hugging Face token",
    ),
    ({"runtime": {"env": [{"name": "HF_TOKEN", "value": "x"}]}}, "is set by the operator"),
    (
        {
            "runtime": {
                "env": [
                    {
                        "name": "A",
                        "valueFrom": {
                            "secretKeyRef": {"name": "s", "key": "k"},
                            "configMapKeyRef": {"name": "c", "key": "k"},
                        },
                    }
                ]
            }
        },
        "set exactly one of secretKeyRef or configMapKeyRef",
    ),
    ({"runtime": {"podLabels": {"kubetune.dev/tuningjob": "x"}}}, "set by the operator or the Job"),
]


@pytest.mark.parametrize(("spec", "expected"), REFUSED, ids=[e for _, e in REFUSED])
def test_api_server_refuses_what_the_trainer_would(
    cluster: Cluster, ns: str, spec: dict, expected: str
) -> None:
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-n", ns, "-f", "-",
        input=json.dumps(tuningjob("refused", **spec)), check=False,
    )  # fmt: skip
    assert result.returncode != 0 and expected in result.stderr, result.stderr


def test_null_validation_split_is_accepted(cluster: Cluster, ns: str) -> None:
    body = tuningjob(
        "nulls", dataset={"source": "s3://d/x", "validation": None, "test": {"fraction": 0.5}}
    )
    cluster.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(body))


def test_allowlists_refuse_before_any_job_exists(
    cluster: Cluster, ns: str, operator: OperatorProcess
) -> None:
    create(
        cluster,
        ns,
        tuningjob(
            "not-allowed",
            runtime={"image": "docker.io/someone/miner:latest", "serviceAccountName": "admin"},
        ),
    )
    status = wait_phase(cluster, ns, "not-allowed", "Failed", reason="NotAllowed")
    assert "KUBETUNE_OPERATOR_ALLOWED_TRAINER_IMAGES" in status["message"]
    assert "KUBETUNE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS" in status["message"]
    assert jobs(cluster, ns, "not-allowed") == []
    assert "jobName" not in status
    # Within the allowlist, the same operator creates the Job.
    create(
        cluster,
        ns,
        tuningjob(
            "allowed", runtime={"image": "kubetune/trainer:v2", "serviceAccountName": "trainer"}
        ),
    )
    wait_for(lambda: jobs(cluster, ns, "allowed"), what="the allowed TuningJob's Job")


def test_missing_secret_shows_in_the_status_and_no_secret_value_leaks(
    cluster: Cluster, ns: str, operator: OperatorProcess, local_node: LocalNode
) -> None:
    cluster.core.create_namespaced_secret(
        ns,
        {"metadata": {"name": "hf-token"}, "stringData": {"HF_TOKEN": SENTINEL}},
    )
    cluster.core.create_namespaced_secret(
        ns,
        {
            "metadata": {"name": "s3-credentials"},
            "stringData": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": SENTINEL},
        },
    )
    body = tuningjob(
        "missing-secret",
        model={"source": "hf://meta-llama/Llama-3.1-8B", "accessSecret": "hf-token"},
        resources={"gpus": 0, "cpu": "1", "memory": "1Gi", "shmSize": "64Mi"},
        scheduling={
            "nodeSelector": local_node.node_selector,
            "tolerations": local_node.tolerations,
        },
        runtime={
            "image": "kubetune/trainer:test",
            "env": [
                {
                    "name": "WANDB_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "token"}},
                }
            ],
        },
    )
    create(cluster, ns, body)
    status = wait_phase(
        cluster, ns, "missing-secret", "Pending", reason="CreateContainerConfigError", timeout=90
    )
    assert 'secret "wandb" not found' in status["message"], status
    condition = next(c for c in status["conditions"] if c["type"] == "Running")
    assert condition["reason"] == "CreateContainerConfigError"
    # A Warning Event says it too, for `kubectl describe` and event exporters.
    found = wait_for(
        lambda: [
            m for r, m in events(cluster, ns, "missing-secret") if r == "CreateContainerConfigError"
        ],
        what="the CreateContainerConfigError Event",
    )
    assert 'secret "wandb" not found' in found[0]

    (job,) = jobs(cluster, ns, "missing-secret")
    texts = {
        "job": json.dumps(job),
        "status": json.dumps(get(cluster, ns, "missing-secret")),
        "events": json.dumps(events(cluster, ns, "missing-secret")),
        "operator log": operator.process.log_tail(400),
    }
    for where, text in texts.items():
        assert SENTINEL not in text, f"a Secret's value is in the {where}"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}},
    } in container["env"]
    cluster.core.delete_namespaced_secret("hf-token", ns)
    cluster.core.delete_namespaced_secret("s3-credentials", ns)
