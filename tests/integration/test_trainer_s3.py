"""A run through real S3 (SeaweedFS): model downloaded and cached, checkpoints and adapter uploaded."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.api.manifest import parse_tuningjob
from kubetune.trainer import recipe
from tests.ground.s3 import S3Endpoint
from tests.support.training import manifest


def keys(client, bucket: str, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    found = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"][len(prefix) :] for item in found)


def test_model_from_s3_results_to_s3_and_a_rerun_resumes_from_s3(
    s3_env: S3Endpoint, s3_bucket: str, tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    client = s3_env.client()
    for path in tiny_model.iterdir():
        client.upload_file(str(path), s3_bucket, f"models/tiny/{path.name}")
    model_bytes = sum(p.stat().st_size for p in tiny_model.iterdir())
    data_bytes = synthetic_data.stat().st_size
    client.upload_file(str(synthetic_data), s3_bucket, "datasets/animals.jsonl")
    document = manifest(
        f"s3://{s3_bucket}/models/tiny/",
        f"s3://{s3_bucket}/datasets/animals.jsonl",
        f"s3://{s3_bucket}/runs/first/",
        training={"maxSteps": 4, "checkpointEvery": 2, "keepCheckpoints": 1, "evalEvery": 2},
        s3=s3_env.spec(),
    )
    job = parse_tuningjob(document)
    result = recipe.train(job, recipe.RunOptions(scratch=tmp_path / "scratch", metrics_port=None))

    assert result.adapter_uri == f"s3://{s3_bucket}/runs/first/adapter/"
    stored = keys(client, s3_bucket, "runs/first/")
    expected = {
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/README.md",
        "adapter/training-summary.json",
    }
    assert expected | {"adapter/tokenizer.json", "metrics.jsonl", "prepare-report.json"} <= set(
        stored
    )
    assert [k for k in stored if k.startswith("checkpoints/") and k.endswith("COMPLETE")] == [
        "checkpoints/step-000004/COMPLETE"
    ]
    summary = json.loads(
        client.get_object(Bucket=s3_bucket, Key="runs/first/adapter/training-summary.json")[
            "Body"
        ].read()
    )
    # Model and dataset both count: the data pipeline reads through the trainer's Storage.
    assert summary["s3_bytes"]["download"] >= model_bytes + data_bytes
    assert summary["s3_bytes"]["upload"] > 0

    # The same job again (a retried pod on the same node): the model comes from the
    # scratch cache, training resumes at its final checkpoint, only the export repeats.
    again = recipe.train(job, recipe.RunOptions(scratch=tmp_path / "scratch", metrics_port=None))
    assert again.metrics["steps"] == 4
    summary = json.loads(
        client.get_object(Bucket=s3_bucket, Key="runs/first/adapter/training-summary.json")[
            "Body"
        ].read()
    )
    assert summary["s3_bytes"]["download"] < model_bytes  # the checkpoint only
