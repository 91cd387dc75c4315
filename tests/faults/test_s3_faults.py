"""The trainer's storage layer against S3 faults, on real SeaweedFS behind a FaultProxy.

Each test shows the fault happened (the proxy's counters) and what the storage layer
made of it: a transfer that completes with the right bytes, or an error that says
what happened, never a silently wrong object.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from kubetune.api.v1alpha1 import S3Spec
from kubetune.trainer.errors import StorageUnavailableError
from kubetune.trainer.storage import Storage, parse_uri
from kubetune.trainer.storage.s3 import MULTIPART_CHUNKSIZE
from tests.faults.proxy import FaultProxy
from tests.ground.s3 import S3Endpoint

MiB = 1 << 20


def _storage(spec: dict[str, str], **kwargs: int) -> Storage:
    return Storage(S3Spec.model_validate(spec), **kwargs)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_burst_of_503_slowdown_is_retried_through(
    proxied_spec: dict, proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    storage = _storage(proxied_spec)
    source = tmp_path / "blob"
    source.write_bytes(os.urandom(3 * MiB))
    uri = f"s3://{s3_bucket}/burst/blob"
    assert not storage.exists(
        uri
    )  # the client is made (seconds on a busy machine) before the burst

    def burst() -> None:
        proxy.set("slowdown")
        time.sleep(1.0)  # shorter than the SDK's retries with backoff
        proxy.set("pass")

    threading.Thread(target=burst).start()
    time.sleep(0.05)
    storage.upload_file(source, uri)
    storage.download_file(uri, tmp_path / "back")
    assert proxy.faults["slowdown"] > 0, ("the burst hit requests", proxy.requests)
    assert _digest(tmp_path / "back") == _digest(source)


def test_a_connection_reset_mid_object_is_retried_and_the_bytes_are_right(
    proxied_spec: dict, proxy: FaultProxy, s3_env: S3Endpoint, s3_bucket: str, tmp_path: Path
) -> None:
    body = os.urandom(4 * MiB)
    s3_env.client().put_object(Bucket=s3_bucket, Key="reset/blob", Body=body)
    storage = _storage(proxied_spec)
    proxy.reset_after = 256 * 1024

    def heal() -> None:  # the first attempts are cut, a later one goes through
        while proxy.faults["reset"] < 2:
            time.sleep(0.01)
        proxy.set("pass")

    healer = threading.Thread(target=heal)
    proxy.set("reset")
    healer.start()
    storage.download_file(f"s3://{s3_bucket}/reset/blob", tmp_path / "blob")
    healer.join()
    assert proxy.faults["reset"] >= 2
    assert (tmp_path / "blob").read_bytes() == body


def test_a_stall_past_the_read_timeout_is_retried(
    proxied_spec: dict,
    proxy: FaultProxy,
    s3_env: S3Endpoint,
    s3_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubetune.trainer.storage import s3 as s3_module

    monkeypatch.setattr(s3_module, "READ_TIMEOUT_S", 1)
    s3_env.client().put_object(Bucket=s3_bucket, Key="stall/blob", Body=b"x" * 1000)
    storage = _storage(proxied_spec)
    assert storage.exists(f"s3://{s3_bucket}/stall/blob")  # the client exists before the stall

    def heal() -> None:  # once a response has been held past the read timeout
        while proxy.faults["stall"] < 1:
            time.sleep(0.01)
        time.sleep(1.5)
        proxy.set("pass")

    healer = threading.Thread(target=heal)
    proxy.set("stall")
    healer.start()
    started = time.monotonic()
    assert storage.read_bytes(f"s3://{s3_bucket}/stall/blob") == b"x" * 1000
    healer.join()
    assert time.monotonic() - started >= 1


def test_a_store_down_for_good_is_a_clear_retryable_error(
    proxied_spec: dict, proxy: FaultProxy, s3_bucket: str
) -> None:
    storage = _storage(proxied_spec, max_attempts=2)
    proxy.set("refuse")
    # Connections accepted and cut at once: the error names the endpoint and is
    # retryable (exit 1, the Job's backoff), never "missing" or "denied".
    with pytest.raises(StorageUnavailableError, match=rf"S3 endpoint {proxy.url}"):
        storage.read_bytes(f"s3://{s3_bucket}/down/blob")
    assert proxy.faults["refuse"] >= 2


def test_an_object_replaced_in_the_middle_of_its_download_fails_instead_of_mixing(
    proxied_spec: dict, proxy: FaultProxy, s3_env: S3Endpoint, s3_bucket: str, tmp_path: Path
) -> None:
    # Replaces the weak integration case (replaced before the download started): here
    # the first part is held by the proxy halfway, the object is replaced, and only
    # then does the download go on. One part at a time, so a later part is read after
    # the replacement; its If-Match on the listed ETag must refuse it.
    old = os.urandom(MULTIPART_CHUNKSIZE + MiB)
    client = s3_env.client()
    client.put_object(Bucket=s3_bucket, Key="swap/model.bin", Body=old)
    storage = _storage(proxied_spec, max_concurrency=1)
    uri = f"s3://{s3_bucket}/swap/model.bin"
    listed = storage.stat(uri)
    proxy.pause_response(after=MiB, match=b"/swap/model.bin")
    dest = tmp_path / "model.bin"
    outcome: list[BaseException | None] = []

    def download() -> None:
        try:
            storage._s3.download([(listed, parse_uri(uri), dest)], on_done=lambda info: None)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=download)
    worker.start()
    assert proxy.paused.wait(30), "the download reached the middle of the first part"
    client.put_object(Bucket=s3_bucket, Key="swap/model.bin", Body=os.urandom(len(old)))
    proxy.release()
    worker.join(120)
    assert isinstance(outcome[0], StorageUnavailableError), outcome
    assert "replaced while it was being downloaded" in str(outcome[0])
    assert not dest.exists()


def test_conditional_writes_on_seaweedfs_let_exactly_one_writer_win(
    s3_env: S3Endpoint, s3_bucket: str
) -> None:
    # What the single-writer lease relies on: the store, not the client, decides.
    storage = _storage(s3_env.spec())
    uri = f"s3://{s3_bucket}/lease/writer-lease.json"
    results: list[str | None] = []
    barrier = threading.Barrier(4)

    def claim(n: int) -> None:
        barrier.wait()
        results.append(storage.write_if(uri, f"{n}".encode(), expect=None))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [etag for etag in results if etag is not None]
    assert len(winners) == 1, results
    assert storage.write_if(uri, b"next", expect=winners[0]) is not None
    assert storage.write_if(uri, b"stale", expect=winners[0]) is None


def test_unfinished_multipart_uploads_are_aborted(s3_env: S3Endpoint, s3_bucket: str) -> None:
    client = s3_env.client()
    client.create_multipart_upload(Bucket=s3_bucket, Key="run/checkpoints/step-000004/opt.pt")
    client.create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/x")
    storage = _storage(s3_env.spec())
    assert storage.abort_uploads(f"s3://{s3_bucket}/run/") == ["run/checkpoints/step-000004/opt.pt"]
    left = [u["Key"] for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])]
    assert left == ["elsewhere/x"]
