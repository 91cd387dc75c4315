"""The local file system as a storage backend: paths, copies, atomic writes, and
`OSError`s turned into `StorageAccessError`s that name the path."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from kubetune.trainer.errors import StorageAccessError
from kubetune.trainer.storage.atomic import atomic_file
from kubetune.trainer.storage.backend import DownloadJob, ObjectInfo, UploadJob
from kubetune.trainer.storage.download_cache import CACHE_MANIFEST


class LocalBackend:
    def child(self, location: Path, relative: str) -> Path:
        return location / relative

    def list(self, location: Path, limit: int | None = None) -> list[ObjectInfo]:
        if not location.is_dir():
            return []
        found = []
        with local_errors(location):
            for path in sorted(location.rglob("*")):
                if path.is_file() and path.name != CACHE_MANIFEST:
                    found.append(self._info(path, path.relative_to(location).as_posix()))
                    if limit and len(found) >= limit:
                        break
        return found

    def stat(self, location: Path) -> ObjectInfo | None:
        with local_errors(location):
            return self._info(location, location.name) if location.is_file() else None

    def read(self, location: Path) -> bytes:
        with local_errors(location):
            return location.read_bytes()

    def write(self, location: Path, data: bytes) -> None:
        with local_errors(location):
            location.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(location) as tmp:
                tmp.write_bytes(data)

    def delete(self, location: Path) -> None:
        with local_errors(location):
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
        with local_errors(src):
            dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(dest) as tmp:
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
def local_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        mapped = _local_error(path, error)
        if mapped is error:
            raise
        raise mapped from None
