"""Pytest fixtures for a real S3 server (SeaweedFS); loaded by tests/conftest.py.

- `s3_server` (session): a running `weed mini`, as an `S3Endpoint` (url, region,
  admin and read-only keys). Started once, on first use; stopped with its whole
  process group at the end of the session, also after failures and Ctrl-C.
- `s3_bucket` (function): the name of a fresh, empty bucket for one test.
- `s3_env` (function): AWS_* variables set to the admin identity (and profiles,
  config files and endpoint overrides cleared), as a credentials Secret provides
  them in a pod; yields the endpoint.

A server that cannot start fails the tests that use it, with its log tail: never a skip.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator

import pytest

from tests.ground.s3 import S3Endpoint, SeaweedS3

# Variables that would make boto3 look somewhere other than the test server.
_AWS_ENV_PREFIXES = ("AWS_",)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    server = SeaweedS3.start(tmp_path_factory.mktemp("seaweedfs"))
    try:
        assert server.endpoint is not None
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Endpoint, request: pytest.FixtureRequest) -> str:
    # Bucket names: 3-63 characters of lowercase letters, digits and hyphens.
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem or 'test'}-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    for key in list(os.environ):
        if key.startswith(_AWS_ENV_PREFIXES):
            monkeypatch.delenv(key)
    # No shared config or credentials files from the machine running the tests.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    # No instance-metadata lookups (seconds of timeouts) when a test drops the keys.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server
