"""S3 as a storage backend, through boto3, and its error policy.

Credentials come only from the environment (the AWS_* variables a Secret provides, or
the pod's identity through the SDK's default chain), never from the spec; requests are
retried by botocore ("standard" mode: throttling, 5xx, connection errors, with
exponential backoff and jitter); files move through s3transfer's TransferManager
(multipart, parallel parts and files). boto3 is imported when the backend is created,
so local-only runs never import it.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kubetune.api.v1alpha1 import S3Spec
from kubetune.trainer.errors import StorageAccessError, StorageUnavailableError
from kubetune.trainer.storage.backend import (
    ByteCallback,
    Direction,
    DownloadJob,
    ObjectInfo,
    UploadJob,
)
from kubetune.trainer.storage.uri import S3Location

# Settings of the transfer manager, measured against boto3's own in
# bench/s3_transfer/ (docs/benchmarks.md). A Python client is bound by its CPU per
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
# A request that sends nothing back for this long is retried (a stalled connection).
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60


class S3Backend:
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
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
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

    def write_if(self, location: S3Location, data: bytes, expect: str | None) -> str | None:
        """Put only if the object is absent (expect None) or has the ETag `expect`.

        S3 conditional writes (If-None-Match: * / If-Match): the store decides, so two
        writers can never both succeed. Returns the new ETag, or None when the
        precondition failed (412, or 409 for a concurrent conditional write).
        """
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if expect is None else {"IfMatch": f'"{expect}"'}
        with self._errors(location, "write"):
            try:
                put = self.client.put_object(
                    Bucket=location.bucket, Key=location.key, Body=data, **condition
                )
            except ClientError as error:
                if _status(error) in (409, 412):
                    return None
                raise
        self.on_bytes("upload", len(data))
        return str(put["ETag"]).strip('"')

    def abort_uploads(self, location: S3Location) -> builtins.list[str]:
        """Abort the unfinished multipart uploads under the prefix; return their keys."""
        aborted: list[str] = []
        with self._errors(location, "list"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=location.bucket, Prefix=location.prefix
            )
            for page in pages:
                for upload in page.get("Uploads", ()):
                    self.client.abort_multipart_upload(
                        Bucket=location.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted.append(upload["Key"])
        return aborted

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
            SSLError,
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
        except SSLError as error:
            # A certificate the client does not trust does not pass with retries.
            raise StorageAccessError(
                f"{location}: the TLS connection to {self.endpoint} failed ({error}); if its "
                "certificate comes from a private CA, put the CA in a ConfigMap and set "
                "spec.s3.caBundle (AWS_CA_BUNDLE for `kubetune train` on a workstation)"
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
