"""Storage for the trainer: every s3:// URI and local path it reads or writes.

One `Storage` object serves both kinds of location with the same operations, so
`kubetune train` runs the same code on a workstation with local paths as in a pod
with S3:

    storage = Storage(spec.s3, on_bytes=counter)
    storage.check_writable(spec.output.destination)       # before any GPU time
    storage.download_prefix(spec.model.source, scratch / "model")   # cached
    storage.upload_dir(checkpoint_dir, join_uri(destination, "checkpoints/step-000200/"))

The modules, one job each:

- `uri`: what a location names (`parse_uri`, `join_uri`, `S3Location`);
- `facade`: `Storage`, which picks the backend by location;
- `backend`: the operations every backend provides, and the values they exchange;
- `s3`: boto3, the transfer settings and the error policy;
- `local`: the file system;
- `download_cache`: which remote version each downloaded file came from;
- `atomic`: writing a file whole or not at all.

Failures become `StorageAccessError` (missing bucket or key, access denied, wrong
or missing credentials: permanent until someone fixes them) or
`StorageUnavailableError` (the store was unreachable or kept failing after retries:
worth retrying the run, which the Job bounds by its backoffLimit). Messages name the
URI, what went wrong and what to do; they never contain credentials.
"""

from kubetune.trainer.storage.backend import (
    ByteCallback,
    ByteCounter,
    Direction,
    ObjectInfo,
    TransferSummary,
)
from kubetune.trainer.storage.download_cache import CACHE_MANIFEST
from kubetune.trainer.storage.facade import Storage
from kubetune.trainer.storage.s3 import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONCURRENCY,
    IO_CHUNKSIZE,
    MULTIPART_CHUNKSIZE,
    MULTIPART_THRESHOLD,
)
from kubetune.trainer.storage.uri import Location, S3Location, join_uri, parse_uri

__all__ = [
    "CACHE_MANIFEST",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_CONCURRENCY",
    "IO_CHUNKSIZE",
    "MULTIPART_CHUNKSIZE",
    "MULTIPART_THRESHOLD",
    "ByteCallback",
    "ByteCounter",
    "Direction",
    "Location",
    "ObjectInfo",
    "S3Location",
    "Storage",
    "TransferSummary",
    "join_uri",
    "parse_uri",
]
