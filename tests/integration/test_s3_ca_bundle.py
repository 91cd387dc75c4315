"""An S3 endpoint whose certificate a private CA signed: the trainer's S3 client trusts it
through AWS_CA_BUNDLE (what the operator sets for spec.s3.caBundle), and refuses it
without. The endpoint is the real S3 server behind a TLS-terminating relay, serving a
certificate from a CA made for this test."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from kubetune.api.contract import CA_BUNDLE_ENV
from kubetune.api.v1alpha1 import S3Spec
from kubetune.trainer.errors import StorageAccessError
from kubetune.trainer.storage import Storage
from tests.ground.pki import CertificateAuthority
from tests.ground.s3 import S3Endpoint


class _Relay(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, target):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def tls_endpoint(s3_server: S3Endpoint, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ca = CertificateAuthority.create(tmp_path / "ca", name="kubetune-test-private-ca")
    pair = ca.issue_server("s3", "s3.test", ["localhost"], ["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert_path, pair.key_path)
    upstream = urlparse(s3_server.url)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                client = context.wrap_socket(self.request, server_side=True)
            except (ssl.SSLError, OSError):
                return  # a client that does not trust the certificate hangs up here
            backend = socket.create_connection((upstream.hostname, upstream.port))
            back = threading.Thread(target=_pipe, args=(backend, client), daemon=True)
            back.start()
            _pipe(client, backend)
            back.join(timeout=5)

    relay = _Relay(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=relay.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{relay.server_address[1]}", ca.cert_path
    finally:
        relay.shutdown()
        relay.server_close()


def test_private_ca_bundle_is_trusted_only_when_given(
    s3_env: S3Endpoint,
    s3_bucket: str,
    tls_endpoint: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, ca_bundle = tls_endpoint
    s3_env.client().put_object(Bucket=s3_bucket, Key="data/x.jsonl", Body=b'{"a": 1}\n')
    spec = S3Spec(endpoint=url, region=s3_env.region, addressing_style="path")

    with pytest.raises(StorageAccessError, match=r"spec\.s3\.caBundle"):
        Storage(spec, max_attempts=1).read_bytes(f"s3://{s3_bucket}/data/x.jsonl")

    monkeypatch.setenv(CA_BUNDLE_ENV, str(ca_bundle))
    storage = Storage(spec, max_attempts=1)
    assert storage.read_bytes(f"s3://{s3_bucket}/data/x.jsonl") == b'{"a": 1}\n'
    storage.write_bytes(f"s3://{s3_bucket}/out/y.txt", b"written over TLS")
    assert s3_env.client().get_object(Bucket=s3_bucket, Key="out/y.txt")["Body"].read() == (
        b"written over TLS"
    )
