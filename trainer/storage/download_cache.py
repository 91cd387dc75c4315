"""The download cache: which remote version each downloaded file came from.

`Storage.download_prefix` skips a file whose object is unchanged since it was
downloaded, so a restarted pod reuses what is on its scratch volume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.trainer.storage.atomic import atomic_file
from kubetune.trainer.storage.backend import ObjectInfo

# Records, in a downloaded folder, which remote version each file came from.
CACHE_MANIFEST = ".kubetune-cache.json"


class DownloadCache:
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
        with atomic_file(self.path) as tmp:
            tmp.write_text(
                json.dumps({"version": 1, "files": self.entries}, indent=1, sort_keys=True)
            )
