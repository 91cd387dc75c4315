"""kubetune.trainer.storage against a real S3 (SeaweedFS, signatures checked)."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from kubetune.api.v1alpha1 import S3Spec
from kubetune.trainer.errors import StorageAccessError, StorageUnavailableError
from kubetune.trainer.storage import (
    CACHE_MANIFEST,
    MULTIPART_CHUNKSIZE,
    MULTIPART_THRESHOLD,
    ByteCounter,
    Storage,
)
from tests.ground.s3 import S3Endpoint

MiB = 1024 * 1024
BIG = MULTIPART_CHUNKSIZE + MiB + 123  # two parts
assert BIG >= MULTIPART_THRESHOLD


@pytest.fixture
def counter() -> ByteCounter:
    return ByteCounter()


@pytest.fixture
def storage(s3_env: S3Endpoint, counter: ByteCounter) -> Storage:
    return Storage(S3Spec(**s3_env.spec(), credentials_secret="tuning-s3"), on_bytes=counter)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder like a model's: small files, nested ones, and one multipart-sized file."""
    root = tmp_path / "model"
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "tokenizer/tokenizer.json").write_text('{"version": "1.0"}')
    (root / "model.safetensors").write_bytes(os.urandom(BIG))
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != CACHE_MANIFEST
    }


def test_upload_and_download_a_prefix(
    storage: Storage, s3_bucket: str, model_dir: Path, tmp_path: Path
) -> None:
    prefix = f"s3://{s3_bucket}/models/tiny/"
    uploaded = storage.upload_dir(model_dir, prefix)
    assert uploaded.files == 3

    listed = storage.list_objects(prefix)
    assert [info.relative for info in listed] == [
        "config.json",
        "model.safetensors",
        "tokenizer/tokenizer.json",
    ]
    sizes = {info.relative: info.size for info in listed}
    assert sizes["model.safetensors"] == BIG
    etags = {info.relative: info.etag for info in listed}
    # A single-part upload's ETag is the MD5 of its content; a multipart one is marked "-N".
    assert etags["config.json"] == hashlib.md5((model_dir / "config.json").read_bytes()).hexdigest()
    assert etags["model.safetensors"].endswith("-2")

    summary = storage.download_prefix(prefix, tmp_path / "scratch/model")
    assert (summary.files, summary.bytes, summary.skipped) == (3, uploaded.bytes, 0)
    assert _tree(tmp_path / "scratch/model") == _tree(model_dir)


def test_second_download_is_served_from_the_cache(
    storage: Storage,
    s3_env: S3Endpoint,
    s3_bucket: str,
    model_dir: Path,
    tmp_path: Path,
    counter: ByteCounter,
) -> None:
    prefix = f"s3://{s3_bucket}/models/tiny/"
    storage.upload_dir(model_dir, prefix)
    dest = tmp_path / "scratch/model"
    storage.download_prefix(prefix, dest)
    downloaded = counter.totals["download"]

    again = storage.download_prefix(prefix, dest)
    assert (again.files, again.skipped) == (0, 3)
    assert counter.totals["download"] == downloaded  # nothing moved

    # A new version of one object (same size, new content): only it comes again.
    s3_env.client().put_object(
        Bucket=s3_bucket, Key="models/tiny/config.json", Body=b'{"model_type": "qwen2"}'
    )
    refreshed = storage.download_prefix(prefix, dest)
    assert (refreshed.files, refreshed.skipped) == (1, 2)
    assert (dest / "config.json").read_bytes() == b'{"model_type": "qwen2"}'


def test_single_files_bytes_and_text(
    storage: Storage, s3_bucket: str, model_dir: Path, tmp_path: Path
) -> None:
    uri = f"s3://{s3_bucket}/runs/r1/model.safetensors"
    storage.upload_file(model_dir / "model.safetensors", uri)
    assert storage.exists(uri)
    assert storage.stat(uri).size == BIG
    storage.download_file(uri, tmp_path / "copy.safetensors")
    assert (tmp_path / "copy.safetensors").read_bytes() == (
        model_dir / "model.safetensors"
    ).read_bytes()

    report = f"s3://{s3_bucket}/runs/r1/prepare-report.json"
    storage.write_text(report, '{"examples": 15011}')
    assert storage.read_text(report) == '{"examples": 15011}'
    assert storage.resolve(report)[0].relative == "prepare-report.json"
    assert [info.relative for info in storage.resolve(f"s3://{s3_bucket}/runs/r1")] == [
        "model.safetensors",
        "prepare-report.json",
    ]
    assert storage.exists(f"s3://{s3_bucket}/runs/")
    assert not storage.exists(f"s3://{s3_bucket}/runs/r1/nothing.json")
    assert not storage.exists(f"s3://{s3_bucket}/elsewhere/")
    storage.delete(report)
    assert not storage.exists(report)


def test_bytes_are_counted_per_direction(
    storage: Storage, s3_bucket: str, model_dir: Path, tmp_path: Path, counter: ByteCounter
) -> None:
    total = sum(len(data) for data in _tree(model_dir).values())
    storage.upload_dir(model_dir, f"s3://{s3_bucket}/m/")
    storage.write_bytes(f"s3://{s3_bucket}/m/extra", b"12345")
    assert counter.totals == {"upload": total + 5, "download": 0}

    storage.download_prefix(f"s3://{s3_bucket}/m/", tmp_path / "d")
    storage.read_bytes(f"s3://{s3_bucket}/m/extra")
    assert counter.totals == {"upload": total + 5, "download": total + 5 + 5}


def test_destination_probe(
    storage: Storage, s3_env: S3Endpoint, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = f"s3://{s3_bucket}/adapters/run-1/"
    storage.check_writable(destination)
    assert (
        s3_env.client().list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    )  # the probe is gone

    for key, value in s3_env.env(reader=True).items():
        monkeypatch.setenv(key, value)
    reader = Storage(S3Spec(**s3_env.spec(), credentials_secret="tuning-s3"))
    assert reader.list_objects(destination) == []  # it can list...
    with pytest.raises(StorageAccessError) as raised:  # ...but not write
        reader.check_writable(destination)
    message = str(raised.value)
    assert destination in message and "is not writable" in message and "access denied" in message
    assert "'tuning-s3'" in message


def test_wrong_secret_is_a_storage_access_error(
    storage: Storage,
    s3_env: S3Endpoint,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    storage.write_text(f"s3://{s3_bucket}/data/train.jsonl", "{}\n")
    wrong = s3_env.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    impostor = Storage(S3Spec(**s3_env.spec(), credentials_secret="tuning-s3"))
    attempts = {
        "list": lambda: impostor.list_objects(f"s3://{s3_bucket}/data/"),
        "read": lambda: impostor.read_bytes(f"s3://{s3_bucket}/data/train.jsonl"),
        "stat": lambda: impostor.stat(f"s3://{s3_bucket}/data/train.jsonl"),
        "download": lambda: impostor.download_file(
            f"s3://{s3_bucket}/data/train.jsonl", tmp_path / "t"
        ),
        "write": lambda: impostor.write_text(f"s3://{s3_bucket}/data/x", "x"),
    }
    for name, attempt in attempts.items():
        with pytest.raises(StorageAccessError) as raised:
            attempt()
        message = str(raised.value)
        assert f"s3://{s3_bucket}/data/" in message, name
        assert "AWS_SECRET_ACCESS_KEY" in message and "'tuning-s3'" in message, name
        assert wrong not in message and s3_env.secret_key not in message, name


def test_missing_credentials(
    s3_env: S3Endpoint, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageAccessError, match=r"no usable S3 credentials.*AWS_ACCESS_KEY_ID"):
        Storage(S3Spec(**s3_env.spec())).list_objects(f"s3://{s3_bucket}/")


def test_missing_bucket_and_key(storage: Storage, s3_bucket: str, tmp_path: Path) -> None:
    missing_bucket = [
        lambda: storage.list_objects("s3://no-such-bucket-kt/data/"),
        lambda: storage.read_bytes("s3://no-such-bucket-kt/data/train.jsonl"),
        lambda: storage.stat("s3://no-such-bucket-kt/data/train.jsonl"),
        lambda: storage.resolve("s3://no-such-bucket-kt/data/train.jsonl"),
        lambda: storage.download_prefix("s3://no-such-bucket-kt/models/", tmp_path / "m"),
        lambda: storage.write_text("s3://no-such-bucket-kt/out/x", "x"),
        lambda: storage.check_writable("s3://no-such-bucket-kt/out/"),
    ]
    for attempt in missing_bucket:
        with pytest.raises(
            StorageAccessError, match="the bucket 'no-such-bucket-kt' does not exist"
        ):
            attempt()

    missing = f"s3://{s3_bucket}/data/train.jsonl"
    for attempt in (
        lambda: storage.read_bytes(missing),
        lambda: storage.stat(missing),
        lambda: storage.download_file(missing, tmp_path / "t"),
    ):
        with pytest.raises(StorageAccessError, match="no such object") as raised:
            attempt()
        assert missing in str(raised.value)
    with pytest.raises(StorageAccessError, match="nothing there"):
        storage.resolve(missing)
    with pytest.raises(StorageAccessError, match="no objects under"):
        storage.download_prefix(f"s3://{s3_bucket}/models/", tmp_path / "m")


def test_unreachable_endpoint(s3_env: S3Endpoint) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = Storage(
        S3Spec(endpoint=f"http://127.0.0.1:{port}", addressing_style="path"), max_attempts=2
    )
    with pytest.raises(
        StorageUnavailableError,
        match=f"cannot reach the S3 endpoint http://127.0.0.1:{port}.*spec.s3.endpoint",
    ):
        storage.list_objects("s3://data/")


def test_object_replaced_between_listing_and_download_fails_instead_of_mixing_versions(
    storage: Storage, s3_env: S3Endpoint, s3_bucket: str, model_dir: Path, tmp_path: Path
) -> None:
    from kubetune.trainer.errors import StorageUnavailableError
    from kubetune.trainer.storage import parse_uri

    uri = f"s3://{s3_bucket}/m/model.safetensors"
    storage.upload_file(model_dir / "model.safetensors", uri)
    listed = storage.stat(uri)
    # Replaced (same size) between listing and downloading: the listed ETag no longer
    # matches. (Replaced halfway through the download itself: tests/faults/test_s3_faults.py.)
    s3_env.client().put_object(Bucket=s3_bucket, Key="m/model.safetensors", Body=os.urandom(BIG))
    dest = tmp_path / "model.safetensors"
    with pytest.raises(StorageUnavailableError, match="replaced while it was being downloaded"):
        storage._s3.download([(listed, parse_uri(uri), dest)], on_done=lambda info: None)
    assert not dest.exists()  # nothing half-written left in place
