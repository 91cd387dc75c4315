"""The test ground's S3 server (tests/ground/s3.py) is a real, authenticating S3."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.ground.s3 import S3Endpoint, SeaweedS3, SeaweedStartError


def test_right_keys_put_and_get(s3_server: S3Endpoint, s3_bucket: str) -> None:
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="hello.txt", Body=b"hello")
    assert client.get_object(Bucket=s3_bucket, Key="hello.txt")["Body"].read() == b"hello"


def test_wrong_secret_is_rejected(s3_server: S3Endpoint, s3_bucket: str) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    impostor = s3_server.client(secret_key=s3_server.secret_key + "x")
    with pytest.raises(ClientError) as raised:
        impostor.get_object(Bucket=s3_bucket, Key="k")
    assert raised.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as raised:
        impostor.put_object(Bucket=s3_bucket, Key="k2", Body=b"x")
    assert raised.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_reader_identity_can_read_but_not_write(s3_server: S3Endpoint, s3_bucket: str) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    reader = s3_server.client(reader=True)
    assert reader.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"x"
    with pytest.raises(ClientError) as raised:
        reader.put_object(Bucket=s3_bucket, Key="k2", Body=b"x")
    assert raised.value.response["Error"]["Code"] == "AccessDenied"


def test_buckets_are_not_created_implicitly(s3_server: S3Endpoint) -> None:
    with pytest.raises(ClientError) as raised:
        s3_server.client().put_object(Bucket="never-created", Key="k", Body=b"x")
    assert raised.value.response["Error"]["Code"] == "NoSuchBucket"


def test_each_test_gets_a_fresh_bucket(s3_server: S3Endpoint, s3_bucket: str) -> None:
    assert s3_server.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    assert s3_bucket.startswith("test-each-test-gets-a-fresh-bucket-")


def test_stop_leaves_no_process_or_socket(tmp_path: Path) -> None:
    server = SeaweedS3.start(tmp_path)
    assert server._process is not None
    pgid = server._process.pid
    ports = list(server._ports.values())
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # signal 0 only checks: does any process of the group remain?
    assert [p for port in ports for p in glob.glob(f"/tmp/seaweedfs-*-{port}.sock")] == []
    server.stop()  # idempotent


def test_a_server_that_cannot_start_fails_loudly_with_its_log(tmp_path: Path) -> None:
    fake_weed = tmp_path / "weed"
    fake_weed.write_text("#!/bin/sh\necho 'fatal: cannot open data folder' >&2\nexit 3\n")
    fake_weed.chmod(0o755)
    with pytest.raises(SeaweedStartError, match="exited with status 3") as raised:
        SeaweedS3.start(tmp_path / "work", weed=fake_weed, timeout=10)
    assert "fatal: cannot open data folder" in str(raised.value)
