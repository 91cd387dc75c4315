"""`Storage`: one object that reads and writes s3:// URIs and local paths with the same
operations, choosing the backend by the location."""

from __future__ import annotations

import logging
import uuid
from functools import cached_property
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import S3Spec
from kubetune.trainer.errors import StorageAccessError
from kubetune.trainer.logs import terminal_progress
from kubetune.trainer.storage.backend import Backend, ByteCallback, ObjectInfo, TransferSummary
from kubetune.trainer.storage.download_cache import CACHE_MANIFEST, DownloadCache
from kubetune.trainer.storage.local import LocalBackend, local_errors
from kubetune.trainer.storage.s3 import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_CONCURRENCY, S3Backend
from kubetune.trainer.storage.uri import Location, S3Location, join_uri, parse_uri

log = logging.getLogger(__name__)


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
        self._local = LocalBackend()

    @cached_property
    def _s3(self) -> S3Backend:
        # Created on first use: local-only runs never import boto3.
        return S3Backend(self.s3_spec, self.on_bytes, self.max_concurrency, self.max_attempts)

    def _backend(self, uri: str | Path) -> tuple[Backend, Any]:
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

    def download_prefix(
        self, uri: str | Path, dest_dir: Path, *, progress: bool = False
    ) -> TransferSummary:
        """Copy every object under `uri` into `dest_dir`, in parallel, keeping relative paths.

        progress=True shows a bar of the bytes on a terminal (the model download).

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
        cache = DownloadCache(dest_dir)
        wanted = [info for info in objects if not cache.is_current(info)]
        jobs = [
            (info, backend.child(location, info.relative), _inside(dest_dir, info))
            for info in wanted
        ]
        for _, _, path in jobs:
            path.parent.mkdir(parents=True, exist_ok=True)
        done: list[ObjectInfo] = []
        bar = terminal_progress(
            sum(info.size for info in wanted),
            desc=f"downloading {uri}",
            unit="B",
            unit_scale=True,
            enabled=progress and bool(wanted),
        )

        def finished(info: ObjectInfo) -> None:
            cache.record(info)
            done.append(info)
            bar.update(info.size)

        try:
            backend.download(jobs, on_done=finished)
        finally:
            bar.close()
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
        with local_errors(src_dir):
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
