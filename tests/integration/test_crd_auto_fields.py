"""The real API server stores number-or-auto training fields as written and applies the
auto defaults. batchSize and gradientAccumulation are int-or-string with a CEL rule;
epochs and learningRate (fractions allowed) are untyped, which the API server cannot
check by CEL: the operator's validation does."""

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
    integers = create(cluster, namespace, "integers", {"epochs": 2, "learningRate": 1})
    assert (
        integers["spec"]["training"]["epochs"],
        integers["spec"]["training"]["learningRate"],
    ) == (2, 1)
    for bad, message in (
        ({"batchSize": "lots"}, "a whole number from 1 to 4096, or auto"),
        ({"batchSize": 0}, "a whole number from 1 to 4096, or auto"),
        ({"gradientAccumulation": 5000}, "a whole number from 1 to 4096, or auto"),
    ):
        with pytest.raises(ApiException) as rejected:
            create(cluster, namespace, "bad", bad)
        assert rejected.value.status == 422 and message in rejected.value.body, (
            bad,
            rejected.value.body,
        )
    # epochs and learningRate are untyped in the CRD: the API server keeps a bad value,
    # and the operator's validation refuses it (tests/unit/test_operator_validation.py).
    kept = create(cluster, namespace, "checked-by-the-operator", {"learningRate": -1})
    assert kept["spec"]["training"]["learningRate"] == -1
