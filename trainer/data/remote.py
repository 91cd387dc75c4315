"""Data files beyond S3 and local paths: pvc://, https:// and any fsspec URL.

A `pvc://CLAIM/PATH` source is read where the operator mounts the claim (read-only, at
`contract.PVC_MOUNT_ROOT/CLAIM`, as for models): a local file or folder from there on.

A dataset (or validation/test) source whose scheme is neither s3:// nor local is read
through fsspec: `https://host/data.jsonl` (fsspec's HTTP filesystem, installed with
the trainer: aiohttp), and any other protocol whose fsspec filesystem is installed in
the trainer image (gcs:// with gcsfs, az:// with adlfs, ...). A source names one file
or, where the filesystem can list (not plain HTTP), a folder of data files.

The prepared-data cache needs a fingerprint before anything is downloaded: the
server's ETag, else its Last-Modified (or the filesystem's mtime), with the size. A
server that gives neither is fingerprinted by the size alone and a warning says that
a changed file of the same size would not be noticed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kubetune.trainer.data.sources import SourceFile, file_kind
from kubetune.trainer.errors import BadDataError, InvalidConfigError, StorageAccessError

log = logging.getLogger(__name__)

_VERSION_KEYS = ("ETag", "etag", "md5Hash", "LastModified", "Last-Modified", "mtime", "updated")


def pvc_path(uri: str) -> Path:
    """Where a pvc://CLAIM/PATH data source is in the pod (KUBETUNE_PVC_ROOT overrides the root)."""
    import os

    from kubetune.api.contract import PVC_MOUNT_ROOT
    from kubetune.api.locations import pvc_claim, pvc_local_path
    from kubetune.trainer.model_source import PVC_MOUNT_ROOT_ENV

    claim = pvc_claim(uri)
    if claim is None:
        raise InvalidConfigError(f"{uri}: names no claim; write pvc://CLAIM/PATH")
    root = Path(os.environ.get(PVC_MOUNT_ROOT_ENV, PVC_MOUNT_ROOT))
    path = root / Path(pvc_local_path(uri)).relative_to(PVC_MOUNT_ROOT)
    if not path.exists():
        raise StorageAccessError(
            f"{uri}: {path} does not exist; the claim '{claim}' is mounted at {root / claim} in the "
            "training pod (pvc:// sources exist only inside the cluster; use a local path with "
            "`kubetune train` on a workstation)"
        )
    return path


def _filesystem(uri: str) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:
        # "Protocol not known: xyz", "Please install gcsfs to access Google Storage".
        scheme = uri.split("://", 1)[0]
        raise InvalidConfigError(
            f"{uri}: cannot read {scheme}:// here ({str(e).splitlines()[0][:200]}); use s3://, "
            "https:// or a scheme whose fsspec filesystem the trainer image installs"
        ) from None


def list_remote(uri: str) -> tuple[list[SourceFile], list[str]]:
    """The data files at an fsspec URL (a file, or every data file under a folder)."""
    fs, path = _filesystem(uri)
    try:
        info = fs.info(path)
        if info.get("type") == "directory":
            found = sorted(fs.find(path, detail=True).items())
            entries = [(name, detail) for name, detail in found if detail.get("type") == "file"]
        else:
            entries = [(path, info)]
    except FileNotFoundError:
        raise StorageAccessError(f"{uri}: no such file (the server answered: not found)") from None
    except OSError as e:  # connection refused, DNS, TLS, HTTP errors other than 404
        raise StorageAccessError(
            f"{uri}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    files, ignored = [], []
    for name, detail in entries:
        full = fs.unstrip_protocol(name) if "://" not in name else name
        if not file_kind(full):
            ignored.append(full)
            continue
        files.append(
            SourceFile(
                uri=full,
                path=None,
                size=int(detail.get("size") or 0),
                fingerprint=_fingerprint(full, detail),
            )
        )
    if not files:
        raise BadDataError(
            f"{uri}: no data files (.jsonl, .jsonl.gz, .json, .parquet, .csv; named by extension)"
        )
    return files, ignored


def download_remote(file: SourceFile, target: Path) -> SourceFile:
    """Copy one remote file to `target`; the SourceFile now points at the local copy."""
    from dataclasses import replace

    fs, path = _filesystem(file.uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fs.get_file(path, str(target))
    except OSError as e:
        raise StorageAccessError(
            f"{file.uri}: download failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    return replace(file, path=target)


def _fingerprint(uri: str, detail: dict[str, Any]) -> str:
    version = next((str(detail[k]) for k in _VERSION_KEYS if detail.get(k)), None)
    if version is None:
        log.warning(
            "%s: the server gives no ETag or modification time; the prepared-data cache knows it "
            "by its size only (a changed file of the same size is not noticed)",
            uri,
        )
    return f"remote:{version or 'unversioned'}:{detail.get('size')}"
