"""What the facade and its backends exchange: object listings, transfer totals, byte
counting, and the operations every backend provides (`Backend`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

Direction = Literal["upload", "download"]
ByteCallback = Callable[[Direction, int], None]
"""Called with (direction, bytes) as S3 transfers progress, from transfer threads."""


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


DownloadJob = tuple[ObjectInfo, Any, Path]  # what, from where (backend location), to which file
UploadJob = tuple[Path, Any]


class Backend(Protocol):
    """The same operations on S3 (`s3.S3Backend`) and on the local file system (`local.LocalBackend`)."""

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
