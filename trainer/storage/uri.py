"""Locations: what an `s3://` URI or a local path names, and joining them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kubetune.trainer.errors import InvalidConfigError


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
