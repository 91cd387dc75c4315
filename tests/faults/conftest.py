"""Fixtures of the fault tier: a FaultProxy in front of the session's SeaweedFS."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.faults.proxy import FaultProxy
from tests.ground.s3 import S3Endpoint


@pytest.fixture
def proxy(s3_env: S3Endpoint) -> Iterator[FaultProxy]:
    upstream = urlsplit(s3_env.url)
    server = FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 80)
    yield server
    server.close()


@pytest.fixture
def proxied_spec(s3_env: S3Endpoint, proxy: FaultProxy) -> dict[str, str]:
    """spec.s3 pointing at the proxy."""
    return {**s3_env.spec(), "endpoint": proxy.url}
