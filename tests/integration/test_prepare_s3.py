"""`kubetune prepare` with data and tokenizer in a real S3 (SeaweedFS, signatures checked)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from kubetune.cli import main
from tests.ground.s3 import S3Endpoint
from tests.support.data import DOLLY
from tests.support.tiny import build_tokenizer


@pytest.fixture
def bucket(s3_env: S3Endpoint, s3_bucket: str, tmp_path: Path) -> str:
    """The Dolly sample split over a prefix (JSON Lines, gzip, Parquet), a stray file, and a tokenizer."""
    client = s3_env.client()
    records = [json.loads(line) for line in DOLLY.read_text().splitlines()]
    client.put_object(
        Bucket=s3_bucket,
        Key="dolly/part-0.jsonl",
        Body="".join(json.dumps(r) + "\n" for r in records[:400]).encode(),
    )
    client.put_object(
        Bucket=s3_bucket,
        Key="dolly/part-1.jsonl.gz",
        Body=gzip.compress("".join(json.dumps(r) + "\n" for r in records[400:800]).encode()),
    )
    parquet = tmp_path / "part-2.parquet"
    pq.write_table(pa.Table.from_pylist(records[800:]), parquet)
    client.put_object(Bucket=s3_bucket, Key="dolly/part-2.parquet", Body=parquet.read_bytes())
    client.put_object(Bucket=s3_bucket, Key="dolly/_SUCCESS", Body=b"")
    build_tokenizer().save_pretrained(tmp_path / "tok")
    for file in (tmp_path / "tok").iterdir():
        client.put_object(Bucket=s3_bucket, Key=f"models/tiny/{file.name}", Body=file.read_bytes())
    return s3_bucket


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # `prepare` without -o writes ./NAME-prepared/


def _prepare(endpoint: S3Endpoint, tmp_path: Path, source: str, model: str, *args: str):
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubetune.dev/v1alpha1",
                "kind": "TuningJob",
                "metadata": {"name": "s3-trial"},
                "spec": {
                    "model": {"source": model},
                    "dataset": {"source": source},
                    "training": {"maxSeqLength": 2048},
                    "output": {"destination": "s3://unused/out/"},
                    "s3": endpoint.spec(),
                },
            }
        )
    )
    return CliRunner().invoke(main, ["prepare", "-f", str(manifest), *args], catch_exceptions=False)


def test_prefix_of_mixed_files_with_tokenizer_from_s3(s3_env, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_SCRATCH_DIR", str(tmp_path / "scratch"))
    result = _prepare(
        s3_env,
        tmp_path,
        f"s3://{bucket}/dolly/",
        f"s3://{bucket}/models/tiny/",
        "-o",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "prepare-report.json").read_text())
    assert [f["records"] for f in report["files"]] == [400, 400, 288]
    assert all(f["fingerprint"].startswith("etag:") for f in report["files"])
    assert report["ignoredFiles"] == [f"s3://{bucket}/dolly/_SUCCESS"]
    assert report["examples"]["read"] == 1088
    assert not list((tmp_path / "scratch").glob("downloads-*"))  # downloads are not kept
    again = _prepare(s3_env, tmp_path, f"s3://{bucket}/dolly/", f"s3://{bucket}/models/tiny/")
    assert "(from cache)" in again.output


def test_missing_key_and_bucket_exit_77(s3_env, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_SCRATCH_DIR", str(tmp_path / "scratch"))
    model = f"s3://{bucket}/models/tiny/"
    missing_key = _prepare(s3_env, tmp_path, f"s3://{bucket}/dolly/absent.jsonl", model)
    assert missing_key.exit_code == 77 and "absent.jsonl" in missing_key.output
    missing_bucket = _prepare(s3_env, tmp_path, "s3://no-such-bucket-kt/data.jsonl", model)
    assert missing_bucket.exit_code == 77 and "no-such-bucket-kt" in missing_bucket.output


def test_wrong_credentials_exit_77_without_leaking_them(s3_env, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_SCRATCH_DIR", str(tmp_path / "scratch"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    result = _prepare(s3_env, tmp_path, f"s3://{bucket}/dolly/", str(tmp_path / "tok"))
    assert result.exit_code == 77, result.output
    assert "wrong-secret-value" not in result.output
