"""The S3 benchmark's harness: one SeaweedFS server, each transfer timed (wall clock,
client and server CPU) and checked whole, the sweep of every contender and the final
rounds of kubetune against the sweep's best, in rotated order (bench/s3_transfer)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.s3_transfer.contenders import (
    BOTO3_CONFIGS,
    BUCKET,
    KUBETUNE,
    SMOKE_BOTO3_CONFIGS,
    Contender,
    boto3_contender,
    kubetune_contender,
)
from bench.s3_transfer.report import Measurement, shape_result
from bench.s3_transfer.shapes import MiB, Shape, shapes, write_files
from tests.ground.s3 import SeaweedS3


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run_once(
    contender: Contender, shape: Shape, source: Path, scratch: Path, client: Any, server_pid: int
) -> Measurement:
    """One timed transfer of `shape`. Cleans up after itself, untimed."""
    dest = Path(tempfile.mkdtemp(dir=scratch, prefix="dest-"))
    prefix = f"uploads/{shape.name}/{time.monotonic_ns()}/"
    try:
        cpu_before, server_before = time.process_time(), process_cpu_seconds(server_pid)
        start = time.perf_counter()
        if shape.direction == "upload":
            contender.upload_dir(source / shape.name, prefix)
        elif shape.single:
            (key,) = shape.files
            contender.download_file(f"{shape.name}/{key}", dest / key)
        else:
            contender.download_prefix(f"{shape.name}/", dest)
        seconds = time.perf_counter() - start
        measured = Measurement(
            shape.bytes / MiB / seconds,
            time.process_time() - cpu_before,
            process_cpu_seconds(server_pid) - server_before,
        )
        check(contender, shape, dest, prefix, client)
        return measured
    finally:
        shutil.rmtree(dest, ignore_errors=True)
        if shape.direction == "upload":
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=prefix
            ):
                for item in page.get("Contents", ()):
                    client.delete_object(Bucket=BUCKET, Key=item["Key"])


def check(contender: Contender, shape: Shape, dest: Path, prefix: str, client: Any) -> None:
    """Every file arrived whole: a benchmark of transfers that lose bytes measures nothing."""
    if shape.direction == "upload":
        found = {
            item["Key"][len(prefix) :]: item["Size"]
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=prefix
            )
            for item in page.get("Contents", ())
        }
    else:
        found = {
            p.relative_to(dest).as_posix(): p.stat().st_size
            for p in dest.rglob("*")
            if p.is_file() and not p.name.startswith(".kubetune")
        }
    if found != shape.files:
        raise RuntimeError(
            f"{contender.name}, {shape.name}: transferred {found}, expected {shape.files}"
        )


@contextlib.contextmanager
def server(workdir: Path) -> Iterator[SeaweedS3]:
    s3 = SeaweedS3.start(workdir / "seaweed")
    try:
        yield s3
    finally:
        s3.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    all_shapes = [s for s in shapes(args.smoke) if not args.shapes or s.name in args.shapes]
    configs = SMOKE_BOTO3_CONFIGS if args.smoke else BOTO3_CONFIGS
    scratch_root = args.workdir or Path(tempfile.gettempdir())
    with (
        tempfile.TemporaryDirectory(dir=scratch_root, prefix="kubetune-bench-s3-") as tmp,
        server(Path(tmp)) as s3,
    ):
        workdir = Path(tmp)
        assert s3.endpoint is not None and s3.pid is not None
        source = workdir / "source"
        for shape in all_shapes:
            write_files(source / shape.name, shape.files)
        client = s3.endpoint.client()
        client.create_bucket(Bucket=BUCKET)
        for shape in all_shapes:  # the objects to download, put there by plain boto3
            if shape.direction == "download":
                for name in shape.files:
                    client.upload_file(
                        str(source / shape.name / name), BUCKET, f"{shape.name}/{name}"
                    )

        contenders = [kubetune_contender(s3.endpoint)] + [
            boto3_contender(s3.endpoint, c) for c in configs
        ]
        by_name = {c.name: c for c in contenders}

        def rounds(
            shape: Shape, phase: list[Contender], repeat: int
        ) -> dict[str, list[Measurement]]:
            """`repeat` rounds of every contender in `phase`, each round in a rotated order."""
            found: dict[str, list[Measurement]] = {c.name: [] for c in phase}
            for rep in range(repeat):
                shift = rep % len(phase)
                for contender in phase[shift:] + phase[:shift]:
                    m = run_once(contender, shape, source, workdir, client, s3.pid)
                    found[contender.name].append(m)
                    logging.info("%s %s: %.0f MiB/s", shape.name, contender.name, m.mib_per_s)
            return found

        results: dict[str, Any] = {}
        for shape in all_shapes:
            rounds(shape, contenders, 1)  # untimed: warms the server's volumes and the connections
            # Sweep: every boto3 configuration, to find boto3's best on this machine and shape.
            sweep = rounds(shape, contenders, args.sweep_repeat)
            best = max(configs, key=lambda c: statistics.median(m.mib_per_s for m in sweep[c.name]))
            # Final: kubetune against the sweep's winner (and the defaults), measured afresh:
            # the winner of a noisy sweep is flattered by its own noise.
            final_names = dict.fromkeys([KUBETUNE, best.name, configs[0].name])
            final = rounds(shape, [by_name[n] for n in final_names], args.repeat)
            results[shape.name] = shape_result(shape, sweep, final, best.name, configs[0].name)
    return results
