"""Storage for the trainer: every s3:// URI and local path it reads or writes.

One `Storage` object serves both kinds of location with the same operations, so
`kubetune train` runs the same code on a workstation with local paths as in a pod
with S3:

    storage = Storage(spec.s3, on_bytes=counter)
    storage.check_writable(spec.output.destination)       # before any GPU time
    storage.download_prefix(spec.model.source, scratch / "model")   # cached
    storage.upload_dir(checkpoint_dir, join_uri(destination, "checkpoints/step-000200/"))

S3 access goes through boto3: credentials come only from the environment (the
AWS_* variables a Secret provides, or the pod's identity through the SDK's default
chain), never from the spec; requests are retried by botocore ("standard" mode:
throttling, 5xx, connection errors, with exponential backoff and jitter); files move
through s3transfer's TransferManager (multipart, parallel parts and files).

Failures become `StorageAccessError` (missing bucket or key, access denied, wrong
or missing credentials: permanent until someone fixes them) or
`StorageUnavailableError` (the store was unreachable or kept failing after retries:
worth retrying the run, which the Job bounds by its backoffLimit). Messages name the URI, what went wrong and what to do; they
never contain credentials.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from kubetune.api.v1alpha1 import S3Spec
from kubetune.trainer.errors import InvalidConfigError, StorageAccessError, StorageUnavailableError

log = logging.getLogger(__name__)

Direction = Literal["upload", "download"]
ByteCallback = Callable[[Direction, int], None]
"""Called with (direction, bytes) as S3 transfers progress, from transfer threads."""

# Records, in a downloaded folder, which remote version each file came from.
CACHE_MANIFEST = ".kubetune-cache.json"

# Settings of the transfer manager, measured against boto3's own in
# bench/s3_transfer.py (docs/benchmarks.md). A Python client is bound by its CPU per
# request and per piece read long before a fast network is (~1 s of CPU per GiB with
# s3transfer's defaults: about 1 GiB/s per core under the GIL), so:
# - parts of 32 MiB (s3transfer: 8 MiB; enlarged automatically for files that would
#   need more than 10,000 parts): a quarter of the requests; files under 32 MiB move
#   in one request. Ten parts still run at once from 320 MiB up, i.e. on every
#   weights file; uploads of files read their parts from disk, not memory.
# - downloads read from the socket and written to the file 1 MiB at a time
#   (s3transfer: 256 KiB). Up to 100 pieces (100 MiB) wait in memory when the disk
#   is slower than the network.
# Together: about 35% less client CPU per GiB downloaded than s3transfer's defaults.
DEFAULT_MAX_CONCURRENCY = 10
DEFAULT_MAX_ATTEMPTS = 5
MULTIPART_THRESHOLD = 32 * 1024 * 1024
MULTIPART_CHUNKSIZE = 32 * 1024 * 1024
IO_CHUNKSIZE = 1024 * 1024


# ---------------------------------------------------------------------------
# Locations


@dataclass(frozen=True)
class S3Location:
    """An object (`key`) or a prefix (`key` empty or ending in '/') in a bucket."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def prefix(self) -> str:
        """The key as a folder: '' or ending in '/'."""
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"


Location = S3Location | Path


def parse_uri(uri: str | Path) -> Location:
    """`s3://bucket/key` → S3Location; a path or `file://` URI → an absolute Path.

    Raises InvalidConfigError for any other scheme (gs://, http://, ...).
    """
    if isinstance(uri, Path):
        return uri.expanduser().absolute()
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise InvalidConfigError(f"'{uri}' names no bucket: write s3://BUCKET/KEY")
        key = uri[len("s3://") + len(parts.netloc) :].lstrip("/")
        return S3Location(parts.netloc, key)
    if parts.scheme == "file":
        return Path(parts.path).expanduser().absolute()
    if parts.scheme:
        raise InvalidConfigError(
            f"'{uri}': unsupported URI scheme '{parts.scheme}://'; "
            "use s3://bucket/key (or s3://bucket/prefix/) or a local path"
        )
    return Path(uri).expanduser().absolute()


def join_uri(base: str, *parts: str) -> str:
    """Join path parts to a URI or path with '/': join_uri('s3://b/run/', 'adapter/') → 's3://b/run/adapter/'."""
    out = base
    for part in parts:
        out = out.rstrip("/") + "/" + part.lstrip("/") if out else part
    return out


# ---------------------------------------------------------------------------
# Results and byte counting


@dataclass(frozen=True)
class ObjectInfo:
    """One object (or file) found under a location."""

    uri: str
    relative: str  # '/'-separated, relative to the listed prefix (its name for a single object)
    size: int
    # S3: the ETag (quotes removed): changes whenever the content does. Local files:
    # a fingerprint of size and modification time, as cheap as a stat.
    etag: str


@dataclass(frozen=True)
class TransferSummary:
    files: int  # files transferred
    bytes: int  # bytes in those files
    skipped: int = 0  # files already present with the same version (downloads)


class ByteCounter:
    """A thread-safe ByteCallback that keeps totals per direction."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[Direction, int] = {"upload": 0, "download": 0}

    def __call__(self, direction: Direction, amount: int) -> None:
        with self._lock:
            self._totals[direction] += amount

    @property
    def totals(self) -> dict[Direction, int]:
        with self._lock:
            return dict(self._totals)


# ---------------------------------------------------------------------------
# The facade


class Storage:
    """Reads and writes s3:// URIs and local paths with the same operations.

    `s3` says how to reach S3 (spec.s3); `on_bytes` is told how many bytes each S3
    transfer moves (local copies are not counted). Retried bytes count again: the
    counter measures traffic, not object sizes. Safe to share between threads.
    """

    def __init__(
        self,
        s3: S3Spec | None = None,
        *,
        on_bytes: ByteCallback | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.s3_spec = s3 or S3Spec()
        self.on_bytes = on_bytes or (lambda direction, amount: None)
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self._local = _LocalBackend()

    @cached_property
    def _s3(self) -> _S3Backend:
        # Created on first use: local-only runs never import boto3.
        return _S3Backend(self.s3_spec, self.on_bytes, self.max_concurrency, self.max_attempts)

    def _backend(self, uri: str | Path) -> tuple[_Backend, Any]:
        location = parse_uri(uri)
        return (self._s3 if isinstance(location, S3Location) else self._local), location

    # -- reading -------------------------------------------------------------------

    def list_objects(self, uri: str | Path) -> list[ObjectInfo]:
        """Every object under `uri` taken as a folder, recursively, sorted by key."""
        backend, location = self._backend(uri)
        return backend.list(location)

    def stat(self, uri: str | Path) -> ObjectInfo:
        """One object's size and ETag; StorageAccessError when it does not exist."""
        backend, location = self._backend(uri)
        info = backend.stat(location)
        if info is None:
            raise StorageAccessError(f"{uri}: no such object{backend.missing_hint(location)}")
        return info

    def resolve(self, uri: str | Path) -> list[ObjectInfo]:
        """The object `uri` names, or else every object under it as a folder.

        What a spec's "a file or a prefix" means. StorageAccessError when neither exists.
        """
        backend, location = self._backend(uri)
        single = backend.stat(location)
        if single is not None:
            return [single]
        found = backend.list(location)
        if not found:
            raise StorageAccessError(
                f"{uri}: nothing there: no object with this name and none under it as a "
                f"folder{backend.missing_hint(location)}"
            )
        return found

    def exists(self, uri: str | Path) -> bool:
        """Whether the object exists (for a URI ending in '/': whether anything is under it)."""
        backend, location = self._backend(uri)
        if str(uri).endswith("/"):
            return bool(backend.list(location, limit=1))
        return backend.stat(location) is not None

    def read_bytes(self, uri: str | Path) -> bytes:
        """A whole (small) object in memory."""
        backend, location = self._backend(uri)
        return backend.read(location)

    def read_text(self, uri: str | Path) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def download_file(self, uri: str | Path, dest: Path) -> Path:
        """Copy one object to the file `dest` (written whole, then renamed into place)."""
        backend, location = self._backend(uri)
        info = self.stat(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        backend.download([(info, location, dest)], on_done=lambda info: None)
        return dest

    def download_prefix(self, uri: str | Path, dest_dir: Path) -> TransferSummary:
        """Copy every object under `uri` into `dest_dir`, in parallel, keeping relative paths.

        A file already downloaded from the same object version (size and ETag, as
        recorded in dest_dir/.kubetune-cache.json) and unchanged since is skipped: a
        restarted pod reuses what is on its scratch volume. Files that are not under
        `uri` are left alone.
        """
        backend, location = self._backend(uri)
        objects = backend.list(location)
        if not objects:
            raise StorageAccessError(
                f"{uri}: no objects under this prefix{backend.missing_hint(location)}"
            )
        dest_dir.mkdir(parents=True, exist_ok=True)
        cache = _DownloadCache(dest_dir)
        wanted = [info for info in objects if not cache.is_current(info)]
        jobs = [
            (info, backend.child(location, info.relative), _inside(dest_dir, info))
            for info in wanted
        ]
        for _, _, path in jobs:
            path.parent.mkdir(parents=True, exist_ok=True)
        done: list[ObjectInfo] = []

        def finished(info: ObjectInfo) -> None:
            cache.record(info)
            done.append(info)

        try:
            backend.download(jobs, on_done=finished)
        finally:
            # Also after a failure: what did arrive is reused by the next attempt.
            cache.save()
        summary = TransferSummary(
            len(done), sum(info.size for info in done), len(objects) - len(wanted)
        )
        log.info(
            "downloaded %s to %s: %d files (%d bytes), %d already cached",
            uri,
            dest_dir,
            summary.files,
            summary.bytes,
            summary.skipped,
        )
        return summary

    # -- writing -------------------------------------------------------------------

    def write_bytes(self, uri: str | Path, data: bytes) -> None:
        backend, location = self._backend(uri)
        backend.write(_object(location, uri), data)

    def write_text(self, uri: str | Path, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def upload_file(self, src: Path, uri: str | Path) -> None:
        """Copy the file `src` to the object `uri`."""
        backend, location = self._backend(uri)
        backend.upload([(src, _object(location, uri))])

    def upload_dir(self, src_dir: Path, uri: str | Path) -> TransferSummary:
        """Copy every file under `src_dir` to the prefix `uri`, in parallel.

        Returns when all are written, so a marker written afterwards is written last.
        """
        backend, location = self._backend(uri)
        if not src_dir.is_dir():
            raise StorageAccessError(f"{src_dir}: no such folder to upload")
        with _local_errors(src_dir):
            files = sorted(
                p for p in src_dir.rglob("*") if p.is_file() and p.name != CACHE_MANIFEST
            )
        jobs = [
            (path, backend.child(location, path.relative_to(src_dir).as_posix())) for path in files
        ]
        backend.upload(jobs)
        summary = TransferSummary(len(jobs), sum(path.stat().st_size for path in files))
        log.info(
            "uploaded %s to %s: %d files (%d bytes)", src_dir, uri, summary.files, summary.bytes
        )
        return summary

    def delete(self, uri: str | Path) -> None:
        """Delete one object (no error when it is already gone)."""
        backend, location = self._backend(uri)
        backend.delete(_object(location, uri))

    def check_writable(self, uri: str | Path) -> None:
        """Write and delete a tiny object under the folder `uri`, or raise StorageAccessError.

        Run before training so a destination that cannot be written (or cleaned up:
        old checkpoints are deleted) fails the run before it spends GPU time.
        """
        probe = join_uri(str(uri), f".kubetune-write-probe-{uuid.uuid4().hex}")
        backend, location = self._backend(probe)
        try:
            backend.write(location, b"")
            backend.delete(location)
        except StorageAccessError as error:
            raise StorageAccessError(
                f"{uri} is not writable (a test write and delete failed): {error}"
            ) from None


def _inside(folder: Path, info: ObjectInfo) -> Path:
    """Where `info` goes under `folder`; a key such as 'a/../../x' or 'a//x' must not escape it."""
    parts = info.relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise StorageAccessError(
            f"{info.uri}: this key cannot be stored as a file under {folder} "
            "(it has an empty, '.' or '..' path segment); rename the object"
        )
    return folder.joinpath(*parts)


def _object(location: Location, uri: str | Path) -> Location:
    """The location, checked to name an object rather than a folder."""
    if isinstance(location, S3Location) and (not location.key or location.key.endswith("/")):
        raise ValueError(f"{uri}: names a folder (prefix); an object key is needed here")
    return location


# ---------------------------------------------------------------------------
# Backends: the same operations on S3 and on the local file system


DownloadJob = tuple[ObjectInfo, Any, Path]  # what, from where (backend location), to which file
UploadJob = tuple[Path, Any]


class _Backend(Protocol):
    def child(self, location: Any, relative: str) -> Any: ...
    def list(self, location: Any, limit: int | None = None) -> list[ObjectInfo]: ...
    def stat(self, location: Any) -> ObjectInfo | None: ...
    def read(self, location: Any) -> bytes: ...
    def write(self, location: Any, data: bytes) -> None: ...
    def delete(self, location: Any) -> None: ...
    def download(
        self, jobs: Sequence[DownloadJob], on_done: Callable[[ObjectInfo], None]
    ) -> None: ...
    def upload(self, jobs: Sequence[UploadJob]) -> None: ...
    def missing_hint(self, location: Any) -> str: ...


class _S3Backend:
    def __init__(
        self, spec: S3Spec, on_bytes: ByteCallback, max_concurrency: int, max_attempts: int
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.spec = spec
        self.on_bytes = on_bytes
        self.endpoint = spec.endpoint or "the AWS S3 endpoint"
        config = Config(
            region_name=spec.region,
            s3={"addressing_style": spec.addressing_style},
            # standard: retries throttling, 5xx and connection errors with jittered
            # exponential backoff. (adaptive adds a client-side rate limiter that
            # slows every thread after one throttle, and is marked experimental.)
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=10,
            read_timeout=60,
            # One connection per transfer thread, and a few for listing and small calls.
            max_pool_connections=max_concurrency + 4,
            user_agent_appid="kubetune",
        )
        # endpoint_url=None lets the SDK's own settings (AWS_ENDPOINT_URL_S3, ...) apply.
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=spec.endpoint, config=config
        )
        self.transfer_config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNKSIZE,
            max_concurrency=max_concurrency,
            io_chunksize=IO_CHUNKSIZE,
            num_download_attempts=max_attempts,
            preferred_transfer_client="classic",  # the CRT client ignores these settings
        )

    def child(self, location: S3Location, relative: str) -> S3Location:
        return S3Location(location.bucket, location.prefix + relative)

    def list(self, location: S3Location, limit: int | None = None) -> list[ObjectInfo]:
        prefix = location.prefix
        found: list[ObjectInfo] = []
        with self._errors(location, "list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=location.bucket,
                Prefix=prefix,
                PaginationConfig={"MaxItems": limit} if limit else {},
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"]
                    if key.endswith("/"):  # a "folder" placeholder made by consoles
                        continue
                    found.append(
                        ObjectInfo(
                            f"s3://{location.bucket}/{key}",
                            key[len(prefix) :],
                            item["Size"],
                            item["ETag"].strip('"'),
                        )
                    )
        return sorted(found, key=lambda info: info.relative)

    def stat(self, location: S3Location) -> ObjectInfo | None:
        if not location.key or location.key.endswith("/"):
            return None
        from botocore.exceptions import ClientError

        with self._errors(location, "read"):
            try:
                head = self.client.head_object(Bucket=location.bucket, Key=location.key)
            except ClientError as error:
                if _status(error) != 404:
                    raise
                self._check_bucket(location)
                return None
        name = location.key.rsplit("/", 1)[-1]
        return ObjectInfo(str(location), name, head["ContentLength"], head["ETag"].strip('"'))

    def read(self, location: S3Location) -> bytes:
        with self._errors(location, "read"):
            data = self.client.get_object(Bucket=location.bucket, Key=location.key)["Body"].read()
        self.on_bytes("download", len(data))
        return data

    def write(self, location: S3Location, data: bytes) -> None:
        with self._errors(location, "write"):
            self.client.put_object(Bucket=location.bucket, Key=location.key, Body=data)
        self.on_bytes("upload", len(data))

    def delete(self, location: S3Location) -> None:
        with self._errors(location, "delete"):
            self.client.delete_object(Bucket=location.bucket, Key=location.key)

    def download(self, jobs: Sequence[DownloadJob], on_done: Callable[[ObjectInfo], None]) -> None:
        with self._transfers() as manager:
            futures = [
                (
                    info,
                    source,
                    manager.download(
                        source.bucket,
                        source.key,
                        str(dest),
                        subscribers=[_Progress(self.on_bytes, "download", info)],
                    ),
                )
                for info, source, dest in jobs
            ]
            for info, source, future in futures:
                with self._errors(source, "read"):
                    future.result()
                on_done(info)

    def upload(self, jobs: Sequence[UploadJob]) -> None:
        with self._transfers() as manager:
            futures = [
                (
                    dest,
                    manager.upload(
                        str(src),
                        dest.bucket,
                        dest.key,
                        subscribers=[_Progress(self.on_bytes, "upload")],
                    ),
                )
                for src, dest in jobs
            ]
            for dest, future in futures:
                with self._errors(dest, "write"):
                    future.result()

    def missing_hint(self, location: S3Location) -> str:
        return f" at {self.endpoint} (S3 keys are case-sensitive)"

    # -- internals ----------------------------------------------------------------

    @contextlib.contextmanager
    def _transfers(self) -> Iterator[Any]:
        from boto3.s3.transfer import create_transfer_manager

        # One manager per batch: its threads carry every file of the batch, and an
        # error leaving the block cancels the transfers still queued.
        with create_transfer_manager(self.client, self.transfer_config) as manager:
            yield manager

    def _check_bucket(self, location: S3Location) -> None:
        """After a 404 on an object: raise if it is the bucket that is missing."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=location.bucket)
        except ClientError as error:
            if _status(error) == 404:
                raise StorageAccessError(
                    self._explain(location, "read", "NoSuchBucket", "")
                ) from None
            raise

    @contextlib.contextmanager
    def _errors(self, location: S3Location, action: str) -> Iterator[None]:
        """Turn SDK exceptions into errors that say which URI, what happened, what to do."""
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )
        from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError

        try:
            yield
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", "")) or str(_status(error))
            message = self._explain(
                location, action, code, str(error.response.get("Error", {}).get("Message", ""))
            )
            if _status(error) >= 500 or _status(error) in (408, 429) or code in _TRANSIENT_CODES:
                raise StorageUnavailableError(message) from None
            raise StorageAccessError(message) from None
        except (NoCredentialsError, PartialCredentialsError) as error:
            raise StorageAccessError(
                f"{location}: no usable S3 credentials ({error}); set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY{self._secret_hint()}"
            ) from None
        except ConnectionError as error:  # refused, DNS, TLS, connect timeout: after retries
            # Retryable: a network outage passes, and a wrong endpoint fails again
            # within the Job's backoffLimit rather than looping.
            raise StorageUnavailableError(
                f"{location}: cannot reach the S3 endpoint {self.endpoint} ({type(error).__name__}); "
                "check spec.s3.endpoint and that the store is reachable from here"
            ) from None
        except S3DownloadFailedError:  # If-Match failed on a part
            raise StorageUnavailableError(
                f"{location}: the object was replaced while it was being downloaded; "
                "retrying the run downloads the new version"
            ) from None
        except (HTTPClientError, RetriesExceededError) as error:  # dropped or stalled mid-transfer
            raise StorageUnavailableError(
                f"{location}: the S3 endpoint {self.endpoint} kept failing during the {action} after "
                f"retries ({type(error).__name__}: {error}); retrying the run may help"
            ) from None

    def _explain(self, location: S3Location, action: str, code: str, detail: str) -> str:
        if code == "NoSuchBucket":
            return (
                f"{location}: the bucket '{location.bucket}' does not exist at {self.endpoint}; "
                "create it or fix the bucket name"
            )
        if code in ("NoSuchKey", "404"):
            return f"{location}: no such object{self.missing_hint(location)}"
        if code in _CREDENTIAL_CODES:
            return (
                f"{location}: the S3 credentials were rejected ({code}); check AWS_ACCESS_KEY_ID, "
                f"AWS_SECRET_ACCESS_KEY and spec.s3.region{self._secret_hint()}"
            )
        if code in _ACCESS_CODES or code == "403":
            return (
                f"{location}: access denied ({action}, {code}); check that the credentials in "
                f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are right and allowed to {action} here"
                f"{self._secret_hint()}"
            )
        return f"{location}: S3 {action} failed with {code}: {detail} (at {self.endpoint}, after retries)"

    def _secret_hint(self) -> str:
        name = self.spec.credentials_secret
        if name:
            return (
                f"; in the cluster they come from the Secret '{name}' (spec.s3.credentialsSecret)"
            )
        return "; in the cluster they come from the Secret named by spec.s3.credentialsSecret, or the operator's default"


_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
    }
)
_ACCESS_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem"})
# What botocore retries as throttling or a passing fault; still failing after every attempt.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        # If-Match failed: the object was replaced since it was listed; a rerun lists again.
        "PreconditionFailed",
    }
)


def _status(error: Any) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class _Progress:
    """An s3transfer subscriber (any object with on_* methods will do).

    Reports bytes to the callback, and hands the manager the size and ETag already
    known from listing: no HeadObject per file, and the ranged reads of a large file
    carry If-Match, so an object replaced mid-download fails instead of mixing versions.
    """

    def __init__(
        self, on_bytes: ByteCallback, direction: Direction, info: ObjectInfo | None = None
    ) -> None:
        self.on_bytes, self.direction, self.info = on_bytes, direction, info

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        if self.info is not None:
            future.meta.provide_transfer_size(self.info.size)
            future.meta.provide_object_etag(f'"{self.info.etag}"')

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        # s3transfer reports a negative amount when it rewinds a retried part; those
        # bytes did cross the network, so the counter keeps them.
        if bytes_transferred > 0:
            self.on_bytes(self.direction, bytes_transferred)


class _LocalBackend:
    def child(self, location: Path, relative: str) -> Path:
        return location / relative

    def list(self, location: Path, limit: int | None = None) -> list[ObjectInfo]:
        if not location.is_dir():
            return []
        found = []
        with _local_errors(location):
            for path in sorted(location.rglob("*")):
                if path.is_file() and path.name != CACHE_MANIFEST:
                    found.append(self._info(path, path.relative_to(location).as_posix()))
                    if limit and len(found) >= limit:
                        break
        return found

    def stat(self, location: Path) -> ObjectInfo | None:
        with _local_errors(location):
            return self._info(location, location.name) if location.is_file() else None

    def read(self, location: Path) -> bytes:
        with _local_errors(location):
            return location.read_bytes()

    def write(self, location: Path, data: bytes) -> None:
        with _local_errors(location):
            location.parent.mkdir(parents=True, exist_ok=True)
            with _atomic_file(location) as tmp:
                tmp.write_bytes(data)

    def delete(self, location: Path) -> None:
        with _local_errors(location):
            location.unlink(missing_ok=True)

    def download(self, jobs: Sequence[DownloadJob], on_done: Callable[[ObjectInfo], None]) -> None:
        for info, source, dest in jobs:
            self._copy(source, dest)
            on_done(info)

    def upload(self, jobs: Sequence[UploadJob]) -> None:
        for src, dest in jobs:
            self._copy(src, dest)

    def missing_hint(self, location: Path) -> str:
        return ""

    @staticmethod
    def _copy(src: Path, dest: Path) -> None:
        with _local_errors(src):
            dest.parent.mkdir(parents=True, exist_ok=True)
            with _atomic_file(dest) as tmp:
                shutil.copyfile(src, tmp)

    @staticmethod
    def _info(path: Path, relative: str) -> ObjectInfo:
        stat = path.stat()
        return ObjectInfo(
            str(path), relative, stat.st_size, f"{stat.st_size:x}-{stat.st_mtime_ns:x}"
        )


_ACCESS_ERRNOS = {
    errno.ENOENT: "no such file or folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a path component is not a folder",
    errno.EISDIR: "is a folder, not a file",
}


def _local_error(path: Path, error: OSError) -> Exception:
    what = _ACCESS_ERRNOS.get(error.errno or 0)
    if what is None:
        return error
    return StorageAccessError(f"{error.filename or path}: {what}")


@contextlib.contextmanager
def _local_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        mapped = _local_error(path, error)
        if mapped is error:
            raise
        raise mapped from None


@contextlib.contextmanager
def _atomic_file(dest: Path) -> Iterator[Path]:
    """A temporary file beside `dest`, renamed onto it only when the block succeeds."""
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class _DownloadCache:
    """dest_dir/.kubetune-cache.json: relative path → the object version downloaded there.

    A file is current when the remote object still has the recorded size and ETag
    and the local file still has the size and mtime it had right after downloading.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / CACHE_MANIFEST
        try:
            self.entries: dict[str, dict[str, Any]] = json.loads(self.path.read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            self.entries = {}

    def is_current(self, info: ObjectInfo) -> bool:
        entry = self.entries.get(info.relative)
        if not entry or entry.get("etag") != info.etag or entry.get("size") != info.size:
            return False
        try:
            stat = (self.folder / info.relative).stat()
        except OSError:
            return False
        return stat.st_size == info.size and stat.st_mtime_ns == entry.get("mtime_ns")

    def record(self, info: ObjectInfo) -> None:
        stat = (self.folder / info.relative).stat()
        self.entries[info.relative] = {
            "etag": info.etag,
            "size": info.size,
            "mtime_ns": stat.st_mtime_ns,
        }

    def save(self) -> None:
        with _atomic_file(self.path) as tmp:
            tmp.write_text(
                json.dumps({"version": 1, "files": self.entries}, indent=1, sort_keys=True)
            )
