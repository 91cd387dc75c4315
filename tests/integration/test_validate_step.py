"""The Validating step (`kubetune prepare --from-env`) with a real S3 and the tiny model:
it publishes the prepared data, and the trainer's own tokenizer and pipeline take it
instead of preparing again; a bad dataset ends it with exit 65 and a message naming
the file and line, and nothing is published."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubetune.api.contract import PREPARED_ENV, SPEC_ENV, TERMINATION_LOG_ENV
from kubetune.api.manifest import parse_tuningjob
from kubetune.cli import main
from kubetune.trainer.data import pipeline
from kubetune.trainer.model_source import fetch_model
from kubetune.trainer.storage import Storage
from kubetune.trainer.tokenizer import load_tokenizer
from tests.ground.s3 import S3Endpoint
from tests.support.data import DOLLY
from tests.support.tiny import save_tiny


@pytest.fixture
def uploaded(s3_env: S3Endpoint, s3_bucket: str, tmp_path: Path) -> str:
    client = s3_env.client()
    model = save_tiny(tmp_path / "tiny")
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        client.upload_file(str(path), s3_bucket, f"models/tiny/{path.relative_to(model)}")
    subset = "".join(DOLLY.read_text().splitlines(keepends=True)[:120])
    client.put_object(Bucket=s3_bucket, Key="data/dolly.jsonl", Body=subset.encode())
    broken = subset.splitlines(keepends=True)
    broken[6] = '{"instruction": "no closing brace"\n'
    client.put_object(Bucket=s3_bucket, Key="bad/dolly.jsonl", Body="".join(broken).encode())
    return s3_bucket


def _manifest(s3: S3Endpoint, bucket: str, data: str, packing: bool) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TuningJob",
        "metadata": {"name": "validated", "namespace": "team"},
        "spec": {
            "model": {"source": f"s3://{bucket}/models/tiny/"},
            "dataset": {"source": f"s3://{bucket}/{data}", "format": "dolly"},
            "training": {"maxSeqLength": 256, "packing": packing},
            "output": {"destination": f"s3://{bucket}/out/"},
            "s3": s3.spec(),
        },
    }


def _validate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, manifest: dict) -> tuple:
    termination = tmp_path / "termination-log"
    monkeypatch.setenv(SPEC_ENV, json.dumps(manifest))
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(termination))
    monkeypatch.setenv("KUBETUNE_SCRATCH_DIR", str(tmp_path / "prepare-pod"))
    monkeypatch.setenv(PREPARED_ENV, manifest["spec"]["output"]["destination"] + "prepared/")
    result = CliRunner().invoke(main, ["prepare", "--from-env"])
    message = json.loads(termination.read_text()) if termination.exists() else None
    return result, message


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_published_data_is_what_the_trainer_takes(
    s3_env: S3Endpoint,
    uploaded: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    packing: bool,
) -> None:
    manifest = _manifest(s3_env, uploaded, "data/dolly.jsonl", packing)
    result, message = _validate(monkeypatch, tmp_path, manifest)
    assert result.exit_code == 0, result.output
    assert message["reason"] == "Validated" and "the data is valid" in message["message"]
    client = s3_env.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=uploaded, Prefix="out/")["Contents"]]
    assert "out/prepare-report.json" in keys
    assert any(k.startswith("out/prepared/") and k.endswith("/COMPLETE") for k in keys), keys
    assert any(k.endswith("/train.parquet") for k in keys)

    # The GPU pod: the trainer's own model download, tokenizer and pipeline, on a fresh
    # scratch volume, take the published data for their cache key.
    job = parse_tuningjob(manifest)
    storage = Storage(job.spec.s3)
    scratch = tmp_path / "gpu-pod"
    folder = fetch_model(job.spec.model, storage, scratch)
    tokenizer = load_tokenizer(folder, job.spec.model.source, needs_pad=not packing)
    # (`kubetune prepare --from-env` configured the root logger as in a pod: listen here.)
    said: list[str] = []
    listener = logging.Handler(logging.INFO)
    listener.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("kubetune.trainer.data.pipeline")
    logger.addHandler(listener)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        prepared = pipeline.prepare(job, scratch / "data", tokenizer, storage)
    finally:
        logger.removeHandler(listener)
        logger.setLevel(level)
    assert any("prepared data from the Validating step" in m for m in said), said
    assert prepared.from_cache and len(prepared.train) > 0
    assert (
        prepared.report["cacheKey"] in message["message"]
        or prepared.report["cacheKey"][:32] in (message["message"])
    )


def test_bad_data_fails_the_step_with_file_and_line_and_publishes_nothing(
    s3_env: S3Endpoint, uploaded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _manifest(s3_env, uploaded, "bad/dolly.jsonl", True)
    result, message = _validate(monkeypatch, tmp_path, manifest)
    assert result.exit_code == 65, result.output
    assert message["reason"] == "BadData"
    assert f"s3://{uploaded}/bad/dolly.jsonl:7" in message["message"], message
    listed = s3_env.client().list_objects_v2(Bucket=uploaded, Prefix="out/prepared/")
    assert listed.get("KeyCount", 0) == 0
