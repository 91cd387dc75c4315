"""The real API server stores number-or-auto training fields as written and applies the
auto defaults (they are int-or-string or untyped in the structural CRD schema)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.ground.cluster import Cluster, wait_for
from tests.integration.operator_support import install_crds


def create(cluster: Cluster, namespace: str, name: str, training: dict[str, Any]) -> dict[str, Any]:
    body = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TuningJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "s3://models/tiny/"},
            "dataset": {"source": "s3://data/emails.jsonl"},
            "output": {"destination": "s3://out/emails/"},
            "training": training,
        },
    }
    return cluster.custom.create_namespaced_custom_object(
        "kubetune.dev", "v1alpha1", namespace, "tuningjobs", body
    )


def test_auto_and_numbers_are_stored_and_bad_batch_values_rejected(
    cluster: Cluster, namespace: str
) -> None:
    install_crds(cluster)
    stored = wait_for(lambda: create(cluster, namespace, "defaults", {}), what="the TuningJob API")
    training = stored["spec"]["training"]
    assert {
        k: training[k] for k in ("epochs", "learningRate", "batchSize", "gradientAccumulation")
    } == {
        "epochs": "auto",
        "learningRate": "auto",
        "batchSize": "auto",
        "gradientAccumulation": "auto",
    }
    numbers = create(
        cluster,
        namespace,
        "numbers",
        {"epochs": 1.5, "learningRate": 2.0e-4, "batchSize": 4, "gradientAccumulation": "auto"},
    )["spec"]["training"]
    assert (numbers["epochs"], numbers["learningRate"], numbers["batchSize"]) == (1.5, 2.0e-4, 4)
    for bad in ({"batchSize": "lots"}, {"batchSize": 0}, {"gradientAccumulation": 5000}):
        with pytest.raises(ApiException) as rejected:
            create(cluster, namespace, "bad", bad)
        assert (
            rejected.value.status == 422
            and "a whole number from 1 to 4096, or auto" in rejected.value.body
        )
