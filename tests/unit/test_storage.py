"""kubetune.trainer.storage without a server: URIs, and every operation on local paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubetune.trainer.errors import InvalidConfigError, StorageAccessError
from kubetune.trainer.storage import (
    CACHE_MANIFEST,
    ByteCounter,
    S3Location,
    Storage,
    join_uri,
    parse_uri,
)


@pytest.mark.parametrize(
    ("uri", "bucket", "key", "prefix"),
    [
        ("s3://data/dolly/train.jsonl", "data", "dolly/train.jsonl", "dolly/train.jsonl/"),
        ("s3://data/dolly/", "data", "dolly/", "dolly/"),
        ("s3://data", "data", "", ""),
        ("s3://data/", "data", "", ""),
        ("s3://my.bucket/a b/ü?x=1#y", "my.bucket", "a b/ü?x=1#y", "a b/ü?x=1#y/"),
    ],
)
def test_parse_s3_uri(uri: str, bucket: str, key: str, prefix: str) -> None:
    location = parse_uri(uri)
    assert location == S3Location(bucket, key)
    assert location.prefix == prefix
    assert str(location) == f"s3://{bucket}/{key}"


def test_parse_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_uri("data/train.jsonl") == tmp_path / "data/train.jsonl"
    assert parse_uri("/srv/model/") == Path("/srv/model")
    assert parse_uri("file:///srv/model") == Path("/srv/model")
    assert parse_uri(Path("rel")) == tmp_path / "rel"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_uri("~/x") == tmp_path / "x"


@pytest.mark.parametrize(
    "uri", ["gs://bucket/key", "https://example.com/data.jsonl", "hf://org/model"]
)
def test_unsupported_scheme_is_a_config_error(uri: str) -> None:
    with pytest.raises(InvalidConfigError, match="unsupported URI scheme") as raised:
        parse_uri(uri)
    assert uri in str(raised.value) and "s3://bucket/key" in str(raised.value)


def test_s3_uri_without_bucket() -> None:
    with pytest.raises(InvalidConfigError, match="names no bucket"):
        parse_uri("s3:///key")


def test_join_uri() -> None:
    assert join_uri("s3://b/run/", "adapter/") == "s3://b/run/adapter/"
    assert (
        join_uri("s3://b/run", "checkpoints/", "step-000001/")
        == "s3://b/run/checkpoints/step-000001/"
    )
    assert join_uri("/out", "/metrics.jsonl") == "/out/metrics.jsonl"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "sub/deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha")
    (root / "sub/b.bin").write_bytes(bytes(range(256)) * 4)
    (root / "sub/deeper/c.json").write_text('{"c": 1}')
    return root


def test_local_listing_stat_resolve_exists(tree: Path) -> None:
    storage = Storage()
    listed = storage.list_objects(str(tree))
    assert [info.relative for info in listed] == ["a.txt", "sub/b.bin", "sub/deeper/c.json"]
    assert [info.size for info in listed] == [5, 1024, 8]
    assert all(info.etag for info in listed)

    single = storage.stat(tree / "a.txt")
    assert (single.relative, single.size, single.uri) == ("a.txt", 5, str(tree / "a.txt"))
    assert storage.resolve(str(tree / "a.txt")) == [single]
    assert storage.resolve(str(tree / "sub")) == storage.list_objects(str(tree / "sub"))

    assert storage.exists(str(tree / "a.txt"))
    assert not storage.exists(str(tree / "missing.txt"))
    assert storage.exists(f"{tree}/sub/")
    assert not storage.exists(f"{tree}/empty/")


def test_local_fingerprint_changes_with_content(tree: Path) -> None:
    storage = Storage()
    before = storage.stat(tree / "a.txt").etag
    (tree / "a.txt").write_text("omega!")
    assert storage.stat(tree / "a.txt").etag != before


def test_local_read_write(tmp_path: Path) -> None:
    storage = Storage()
    target = tmp_path / "out/nested/metrics.jsonl"
    storage.write_text(str(target), '{"step": 1}\n')
    assert storage.read_text(str(target)) == '{"step": 1}\n'
    storage.write_bytes(f"file://{target}", b"\x00\x01")
    assert storage.read_bytes(target) == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["metrics.jsonl"]  # no temporary files left
    storage.delete(str(target))
    storage.delete(str(target))  # already gone: no error
    assert not target.exists()


def test_local_missing_paths_are_storage_access_errors(tmp_path: Path) -> None:
    storage = Storage()
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(StorageAccessError, match="no such file"):
        storage.read_bytes(str(missing))
    with pytest.raises(StorageAccessError, match="no such object"):
        storage.stat(str(missing))
    with pytest.raises(StorageAccessError, match="nothing there"):
        storage.resolve(str(missing))
    with pytest.raises(StorageAccessError, match="no objects under"):
        storage.download_prefix(str(tmp_path / "nothing/"), tmp_path / "dest")
    with pytest.raises(StorageAccessError, match="no such folder"):
        storage.upload_dir(tmp_path / "nothing", str(tmp_path / "dest"))


def test_local_download_prefix_and_cache(tree: Path, tmp_path: Path) -> None:
    storage = Storage()
    dest = tmp_path / "scratch/model"

    first = storage.download_prefix(str(tree), dest)
    assert (first.files, first.bytes, first.skipped) == (3, 1037, 0)
    assert (dest / "sub/deeper/c.json").read_text() == '{"c": 1}'
    assert (dest / CACHE_MANIFEST).is_file()

    again = storage.download_prefix(str(tree), dest)
    assert (again.files, again.skipped) == (0, 3)

    # The source changes: only that file comes again.
    (tree / "a.txt").write_text("changed")
    changed = storage.download_prefix(str(tree), dest)
    assert (changed.files, changed.skipped) == (1, 2)
    assert (dest / "a.txt").read_text() == "changed"

    # The local copy is damaged: it is replaced.
    (dest / "sub/b.bin").write_bytes(b"truncated")
    repaired = storage.download_prefix(str(tree), dest)
    assert (repaired.files, repaired.skipped) == (1, 2)
    assert (dest / "sub/b.bin").read_bytes() == (tree / "sub/b.bin").read_bytes()

    # The manifest is bookkeeping, not data: not listed, not uploaded.
    assert CACHE_MANIFEST not in [info.relative for info in storage.list_objects(str(dest))]


def test_local_upload_dir_and_file(tree: Path, tmp_path: Path) -> None:
    storage = Storage()
    (tree / CACHE_MANIFEST).write_text("{}")
    summary = storage.upload_dir(tree, str(tmp_path / "out/adapter/"))
    assert (summary.files, summary.bytes) == (3, 1037)
    uploaded = sorted(
        p.relative_to(tmp_path / "out/adapter").as_posix()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file()
    )
    assert uploaded == ["a.txt", "sub/b.bin", "sub/deeper/c.json"]

    storage.upload_file(tree / "a.txt", str(tmp_path / "out/copy.txt"))
    assert (tmp_path / "out/copy.txt").read_text() == "alpha"


def test_local_check_writable(tmp_path: Path) -> None:
    storage = Storage()
    storage.check_writable(str(tmp_path / "new/destination/"))
    assert list((tmp_path / "new/destination").iterdir()) == []  # the probe is gone

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StorageAccessError, match="is not writable") as raised:
        storage.check_writable(str(blocker / "out/"))
    assert str(blocker) in str(raised.value)


def test_keys_cannot_escape_the_destination(tmp_path: Path) -> None:
    from kubetune.trainer.storage import ObjectInfo
    from kubetune.trainer.storage.facade import _inside

    for relative in ("../x", "a/../../x", "a//x", "./x"):
        with pytest.raises(StorageAccessError, match="cannot be stored as a file"):
            _inside(tmp_path, ObjectInfo(f"s3://b/p/{relative}", relative, 1, "e"))
    assert _inside(tmp_path, ObjectInfo("s3://b/p/a/b", "a/b", 1, "e")) == tmp_path / "a/b"


def test_local_operations_are_not_counted_as_s3_bytes(tree: Path, tmp_path: Path) -> None:
    counter = ByteCounter()
    storage = Storage(on_bytes=counter)
    storage.download_prefix(str(tree), tmp_path / "dest")
    storage.upload_dir(tree, str(tmp_path / "out"))
    assert counter.totals == {"upload": 0, "download": 0}


def test_byte_counter_is_thread_safe() -> None:
    import threading

    counter = ByteCounter()

    def add() -> None:
        for _ in range(10_000):
            counter("download", 3)
            counter("upload", 1)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.totals == {"upload": 40_000, "download": 120_000}


def test_local_only_storage_never_imports_boto3(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, pathlib; from kubetune.trainer.storage import Storage;"
        f"s = Storage(); s.write_text({str(tmp_path / 'x')!r}, 'y'); s.read_text({str(tmp_path / 'x')!r});"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(tmp_path))
