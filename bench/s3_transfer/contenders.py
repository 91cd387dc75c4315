"""The S3 benchmark's contenders: kubetune's `Storage` as the trainer creates it, and
boto3's TransferManager driven directly under each `TransferConfig` (bench/s3_transfer)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.s3_transfer.shapes import MiB
from kubetune.api.v1alpha1 import S3Spec
from kubetune.trainer.storage import Storage
from tests.ground.s3 import S3Endpoint

BUCKET = "bench"


@dataclass(frozen=True)
class Boto3Config:
    name: str
    max_concurrency: int = 10
    chunksize: int = 8 * MiB
    threshold: int = 8 * MiB
    io_chunksize: int = 256 * 1024  # the piece of a download stream read and written at a time


BOTO3_CONFIGS = (
    Boto3Config("boto3 defaults (10 threads, 8 MiB parts, 256 KiB io)"),
    Boto3Config("boto3 4 threads", max_concurrency=4),
    Boto3Config("boto3 20 threads", max_concurrency=20),
    Boto3Config("boto3 32 MiB parts", chunksize=32 * MiB),
    Boto3Config("boto3 20 threads, 64 MiB parts", max_concurrency=20, chunksize=64 * MiB),
    Boto3Config("boto3 1 MiB io", io_chunksize=MiB),
    Boto3Config("boto3 32 MiB parts, 1 MiB io", chunksize=32 * MiB, io_chunksize=MiB),
)
SMOKE_BOTO3_CONFIGS = BOTO3_CONFIGS[:1]
KUBETUNE = "kubetune Storage"


@dataclass
class Contender:
    """Runs one shape once: download `prefix` into `dest`, or upload `src` to `prefix`."""

    name: str
    download_prefix: Callable[[str, Path], None]
    download_file: Callable[[str, Path], None]
    upload_dir: Callable[[Path, str], None]


def kubetune_contender(endpoint: S3Endpoint) -> Contender:
    os.environ.update(endpoint.env())  # credentials from the environment, as in a pod
    storage = Storage(
        S3Spec(endpoint=endpoint.url, region=endpoint.region, addressing_style="path")
    )
    storage.list_objects(f"s3://{BUCKET}/")  # creates the client outside the timed region
    return Contender(
        KUBETUNE,
        download_prefix=lambda prefix, dest: storage.download_prefix(
            f"s3://{BUCKET}/{prefix}", dest
        ),
        download_file=lambda key, dest: storage.download_file(f"s3://{BUCKET}/{key}", dest),
        upload_dir=lambda src, prefix: storage.upload_dir(src, f"s3://{BUCKET}/{prefix}"),
    )


def boto3_contender(endpoint: S3Endpoint, config: Boto3Config) -> Contender:
    """What a user of boto3 writes: one client, one TransferManager per batch of files."""
    import boto3
    from boto3.s3.transfer import TransferConfig, create_transfer_manager
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        config=Config(
            s3={"addressing_style": "path"},
            # As many connections as threads, and a few for listing (as kubetune's client):
            # with boto3's default of 10, 10 threads plus a listing discard connections.
            max_pool_connections=config.max_concurrency + 4,
        ),
    )
    transfer = TransferConfig(
        multipart_threshold=config.threshold,
        multipart_chunksize=config.chunksize,
        max_concurrency=config.max_concurrency,
        io_chunksize=config.io_chunksize,
        preferred_transfer_client="classic",
    )
    client.list_objects_v2(Bucket=BUCKET, MaxKeys=1)

    def download_prefix(prefix: str, dest: Path) -> None:
        keys = [
            item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=prefix
            )
            for item in page.get("Contents", ())
        ]
        with create_transfer_manager(client, transfer) as manager:
            futures = []
            for key in keys:
                path = dest / key[len(prefix) :]
                path.parent.mkdir(parents=True, exist_ok=True)
                futures.append(manager.download(BUCKET, key, str(path)))
            for future in futures:
                future.result()

    def download_file(key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with create_transfer_manager(client, transfer) as manager:
            manager.download(BUCKET, key, str(dest)).result()

    def upload_dir(src: Path, prefix: str) -> None:
        with create_transfer_manager(client, transfer) as manager:
            futures = [
                manager.upload(str(path), BUCKET, prefix + path.relative_to(src).as_posix())
                for path in sorted(src.rglob("*"))
                if path.is_file()
            ]
            for future in futures:
                future.result()

    return Contender(config.name, download_prefix, download_file, upload_dir)
