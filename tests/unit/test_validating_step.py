"""The Validating step: its Job, and the reconciler's order (CPU check first, GPU Job only
after it succeeded; a bad dataset fails the TuningJob with no GPU Job ever created).

The API server is the recording stand-in of test_operator_reconciler.py; the real one
runs this in tests/integration/test_operator_validating.py and tests/e2e.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from kubetune.api.contract import PREPARED_ENV, TerminationMessage
from kubetune.operator.builders import (
    STAGE_LABEL,
    build_job,
    build_validate_job,
    validate_job_name,
)
from kubetune.operator.metrics import OperatorMetrics
from kubetune.operator.reconciler import Reconciler, Views
from tests.unit.operator_fixtures import condition, pod, running, settings, terminated, tuningjob
from tests.unit.test_operator_reconciler import KEY, Indices, RecordingApi

pytestmark = pytest.mark.unit


def _container(job: dict) -> dict:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def test_validate_job_is_a_small_cpu_pod_with_the_trainers_environment() -> None:
    config = settings(validate_data=True, validate_cpu="2", validate_memory="8Gi")
    job = build_validate_job(
        tuningjob(
            model={"source": "hf://meta-llama/Llama-3.1-8B", "accessSecret": "hf"},
            resources={"gpus": 8},
            scheduling={"affinity": {"nodeAffinity": {}}, "queueName": "gpus"},
        ),
        config,
        owner_uid="tj-uid",
    )
    assert job["metadata"]["name"] == validate_job_name("dolly") == "dolly-validate"
    assert job["metadata"]["labels"][STAGE_LABEL] == "validate"
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    assert job["spec"]["suspend"] is False  # Kueue admits GPU Jobs, not this one
    pod_spec = job["spec"]["template"]["spec"]
    container = _container(job)
    assert container["command"] == ["kubetune", "prepare", "--from-env"]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert "ports" not in container
    assert "affinity" not in pod_spec and "tolerations" not in pod_spec
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf"
    assert env[PREPARED_ENV]["value"] == "s3://adapters/dolly/prepared/"
    gpu = build_job(tuningjob(), config)
    assert {e["name"]: e for e in _container(gpu)["env"]}[PREPARED_ENV] == env[PREPARED_ENV]
    assert PREPARED_ENV not in {
        e["name"] for e in _container(build_job(tuningjob(), settings()))["env"]
    }


class ValidatingIndices(Indices):
    """Indices holding Jobs and pods, as kopf's would."""

    def __init__(self) -> None:
        super().__init__()
        self.pods: list[dict[str, Any]] = []

    def views(self) -> Views:
        return Views(
            tuningjob=lambda key: self.tuningjob,
            jobs=lambda key: self.jobs,
            pods=lambda key: self.pods,
        )

    def show(self, created: dict, uid: str, **status: Any) -> dict:
        job = copy.deepcopy(created)
        job["metadata"] |= {
            "uid": uid,
            "ownerReferences": [{"uid": "tj-uid", "controller": True}],
        }
        job["status"] = status
        self.jobs.append(job)
        return job

    def add_pod(self, job_uid: str, body: dict) -> None:
        body["metadata"]["ownerReferences"] = [{"uid": job_uid, "controller": True}]
        self.pods.append(body)


class CapturingApi(RecordingApi):
    def __init__(self) -> None:
        super().__init__()
        self.created: list[dict] = []

    async def create_job(self, job: dict) -> dict:
        self.created.append(job)
        return await super().create_job(job)


def _reconciler(api: RecordingApi, indices: ValidatingIndices) -> Reconciler:
    return Reconciler(
        settings(validate_data=True),
        api,
        indices.views(),
        OperatorMetrics(),
        identity="t",
        clock=lambda: 1000.0,
    )  # type: ignore[arg-type]


def _merged_status(api: RecordingApi) -> dict:
    status: dict = {}
    for patch in api.status_writes:
        status.update({k: v for k, v in patch.items() if v is not None})
    return status


def test_the_gpu_job_starts_only_after_the_data_is_validated() -> None:
    async def scenario() -> tuple[CapturingApi, list[dict]]:
        api, indices = CapturingApi(), ValidatingIndices()
        reconciler = _reconciler(api, indices)
        seen = []
        await reconciler.reconcile(KEY)  # lock the spec, create the Validating step's Job
        seen.append(_merged_status(api))
        (created,) = api.created
        indices.tuningjob["status"] = {"jobName": "dolly", "phase": "Validating"}
        validation = indices.show(created, "validate-uid")
        indices.add_pod(
            "validate-uid",
            pod("dolly-validate-x", phase="Running", node="cpu-1", state=running(),
                scheduled={"type": "PodScheduled", "status": "True"}),
        )  # fmt: skip
        await reconciler.reconcile(KEY)
        seen.append(_merged_status(api))
        assert len(api.created) == 1, "no GPU Job while the data is checked"
        validation["status"] = {
            "conditions": [condition("Complete")],
            "completionTime": "2026-01-01T00:05:00Z",
        }
        indices.pods[0]["status"] |= {"phase": "Succeeded"}
        await reconciler.reconcile(KEY)
        seen.append(_merged_status(api))
        await reconciler.close()
        return api, seen

    api, seen = asyncio.run(scenario())
    assert [j["metadata"]["name"] for j in api.created] == ["dolly-validate", "dolly"]
    assert seen[0]["phase"] == "Validating" and seen[0]["jobName"] == "dolly"
    assert seen[1]["phase"] == "Validating" and seen[1]["reason"] == "PreparingData"
    assert "no GPU is requested" in seen[1]["message"]
    assert seen[2]["phase"] == "Pending"  # the GPU Job's pod comes next
    gpu = api.created[1]
    assert "nvidia.com/gpu" in _container(gpu)["resources"]["limits"]


def test_bad_data_fails_the_tuningjob_without_a_gpu_job() -> None:
    report = "s3://datasets/dolly.jsonl:7: not valid JSON (Expecting ',' delimiter); fix the line"

    async def scenario() -> tuple[CapturingApi, dict]:
        api, indices = CapturingApi(), ValidatingIndices()
        reconciler = _reconciler(api, indices)
        await reconciler.reconcile(KEY)
        (created,) = api.created
        indices.tuningjob["status"] = {"jobName": "dolly", "phase": "Validating"}
        indices.show(
            created,
            "validate-uid",
            conditions=[condition("Failed", "PodFailurePolicy")],
        )
        message = TerminationMessage(reason="BadData", message=report).to_json()
        indices.add_pod(
            "validate-uid", pod("dolly-validate-x", phase="Failed", state=terminated(65, message))
        )
        await reconciler.reconcile(KEY)
        await reconciler.close()
        return api, _merged_status(api)

    api, status = asyncio.run(scenario())
    assert [j["metadata"]["name"] for j in api.created] == ["dolly-validate"]
    assert status["phase"] == "Failed" and status["reason"] == "BadData"
    assert report in status["message"] and "no GPU was requested" in status["message"]


def test_render_shows_the_validating_steps_job_and_refuses_what_the_operator_refuses(
    tmp_path: Any,
) -> None:
    import yaml

    from kubetune.operator.render import render
    from kubetune.operator.validation import PolicyError
    from tests.unit.operator_fixtures import manifest

    path = tmp_path / "tj.yaml"
    path.write_text(yaml.safe_dump(manifest(runtime={"image": "other/image:1"})))
    job = yaml.safe_load(render(path, settings=settings(validate_data=True), validating_step=True))
    assert job["metadata"]["name"] == "dolly-validate"
    assert _container(job)["command"] == ["kubetune", "prepare", "--from-env"]
    with pytest.raises(PolicyError, match="ALLOWED_TRAINER_IMAGES"):
        render(path, settings=settings(allowed_trainer_images=["registry.corp/*"]))
