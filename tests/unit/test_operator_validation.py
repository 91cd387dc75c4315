"""What the operator rejects beyond the schema, and how it says so."""

from __future__ import annotations

import pytest

from kubetune.api.manifest import SpecError
from kubetune.operator.validation import validate
from tests.unit.operator_fixtures import manifest, settings


def _problems(document: dict, **config) -> list[str]:
    with pytest.raises(SpecError) as error:
        validate(document, settings(**config), "TuningJob team-a/dolly")
    return [f"{p.field}: {p.message}" for p in error.value.problems]


def test_a_good_manifest_passes() -> None:
    assert validate(manifest(), settings(), "x").metadata.name == "dolly"


def test_local_paths_do_not_work_in_a_cluster() -> None:
    problems = _problems(
        manifest(model={"source": "/models/llama"}, output={"destination": "./out"})
    )
    assert problems == [
        "spec.model.source: use s3://, pvc:// or hf:// in a cluster; a local path works only with "
        "`kubetune train` on a workstation (got '/models/llama')",
        "spec.output.destination: use an s3://bucket/prefix URI in a cluster; a local path works only "
        "with `kubetune train` on a workstation (got './out')",
    ]


def test_bad_uris_and_claims() -> None:
    problems = _problems(
        manifest(
            model={"source": "pvc:///weights"},
            dataset={"source": "s3://B/x.jsonl", "validation": {"source": "gs://bucket/val.jsonl"}},
        )
    )
    assert [p.split(":")[0] for p in problems] == [
        "spec.model.source",
        "spec.dataset.source",
        "spec.dataset.validation.source",
    ]
    assert "pvc://CLAIM/PATH" in problems[0] and "bucket name" in problems[1]


def test_shm_must_fit_in_memory_including_operator_defaults() -> None:
    (problem,) = _problems(manifest(resources={"shmSize": "16Gi"}), default_memory="16Gi")
    assert problem.startswith(
        "spec.resources.shmSize: /dev/shm (16Gi) is memory and must fit inside the memory limit (16Gi)"
    )


def test_schema_errors_name_the_field_in_manifest_terms() -> None:
    problems = _problems(manifest(training={"learningRate": -1, "epoch": 2}))
    assert (
        "spec.training.learningRate: input should be greater than 0, or auto (got -1)" in problems
    )
    assert "spec.training.epoch: unknown field; did you mean epochs?" in problems


def test_a_job_ttl_under_a_minute_is_refused() -> None:
    # A Job gone before the operator read its verdict is created again: a TTL of 0 would
    # rerun a finished job forever.
    (problem,) = _problems(manifest(runtime={"ttlSecondsAfterFinished": 0}))
    assert (
        problem
        == "spec.runtime.ttlSecondsAfterFinished: input should be greater than or equal to 60 (got 0)"
    )
    assert (
        validate(
            manifest(runtime={"ttlSecondsAfterFinished": 60}), settings(), "x"
        ).spec.runtime.ttl_seconds_after_finished
        == 60
    )


def test_an_init_adapter_must_be_in_s3_in_a_cluster() -> None:
    problems = _problems(manifest(method={"type": "lora", "initAdapter": "/adapters/first"}))
    assert problems == [
        "spec.method.initAdapter: use an s3://bucket/prefix URI in a cluster; a local path works "
        "only with `kubetune train` on a workstation (got '/adapters/first')"
    ]
    assert validate(
        manifest(method={"type": "lora", "initAdapter": "s3://adapters/first/adapter/"}),
        settings(),
        "x",
    )


def test_datasets_may_come_over_https_in_a_cluster() -> None:
    document = manifest(
        dataset={
            "source": "https://data.example.com/emails.jsonl",
            "validation": {"source": "http://files.internal/validation.jsonl"},
        }
    )
    assert validate(document, settings(), "x").spec.dataset.source.startswith("https://")


def test_datasets_on_a_pvc_need_a_claim_name() -> None:
    assert validate(manifest(dataset={"source": "pvc://team-data/emails.jsonl"}), settings(), "x")
    problems = _problems(manifest(dataset={"source": "pvc:///emails.jsonl"}))
    assert problems == [
        "spec.dataset.source: pvc:// needs a PersistentVolumeClaim name, as pvc://CLAIM/PATH "
        "(got 'pvc:///emails.jsonl')"
    ]
