"""Benchmark: S3 throughput of kubetune's storage layer against plain boto3, side by side.

    .venv/bin/python -m bench.s3_transfer [--repeat 7] [--json out.json]    # make bench-s3
    .venv/bin/python -m bench.s3_transfer --smoke                          # seconds, small files

One SeaweedFS server (`weed mini`, tests/ground/s3.py) on loopback serves every
contender, on the same files, in the same run. Shapes, as the trainer moves them:

- model: download a prefix like a Hugging Face model folder: 2 x 256 MiB
  `model-0000N-of-00002.safetensors`, a 2 MiB `tokenizer.json` and small JSON files.
  kubetune: `Storage.download_prefix` (lists, downloads, records its cache manifest).
- dataset: download one 100 MiB JSONL object. kubetune: `Storage.download_file`.
- checkpoint: upload a folder like a LoRA checkpoint of an 8B Llama (r 16 on every
  linear layer: 42M adapter parameters): a 160 MiB `adapter_model.safetensors`, an
  80 MiB `optimizer.pt` (8-bit AdamW state) and small files. kubetune:
  `Storage.upload_dir`.

Contenders: kubetune's `Storage` as the trainer creates it, and boto3's
TransferManager driven directly (one manager per batch, every file of the batch
submitted to it, listing included for the model prefix) under several
`TransferConfig`s: the defaults (8 MiB parts, 10 threads, downloads read and
written 256 KiB at a time), fewer and more threads, bigger parts, bigger io chunks.
Each boto3 client keeps as many pooled connections as it has threads, plus 4.
Both sides use botocore's default checksums (CRC32 on uploads, validated on downloads).

Two phases per shape, after one untimed round that warms the server and connections.
Sweep: every contender `--sweep-repeat` times, to find boto3's best configuration on
this machine. Final: kubetune, that configuration and boto3's defaults, `--repeat`
times more, measured afresh (the winner of a noisy sweep is flattered by its own
noise). Each round runs every contender once, in a rotated order, so that load from
other work on the machine falls on all of them alike. Reported: median and range of
MiB/s, kubetune's median over the best boto3 configuration's (the goal: within 10%),
and the CPU seconds per GiB of the client (this process) and of the server: on a
shared machine the CPU a client burns is a steadier figure than its wall-clock rate.
Files live in a temporary folder; each download goes to a fresh folder, removed (and
each upload deleted from the bucket) outside the timed region; every transfer is
checked to have moved every file whole.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import RESULTS, Report, markdown_table, summary
from kubetune.api.v1alpha1 import S3Spec
from kubetune.trainer.storage import Storage
from tests.ground.s3 import S3Endpoint, SeaweedS3

MiB = 1024 * 1024
BUCKET = "bench"


# ---------------------------------------------------------------------------
# Shapes: the files, in full and smoke sizes


@dataclass(frozen=True)
class Shape:
    name: str
    direction: str  # "download" | "upload"
    files: dict[str, int]  # relative path -> size in bytes
    single: bool = False  # one object (download_file) rather than a prefix

    @property
    def bytes(self) -> int:
        return sum(self.files.values())


SMALL_MODEL_FILES = {
    "config.json": 700,
    "generation_config.json": 180,
    "model.safetensors.index.json": 24_000,
    "special_tokens_map.json": 300,
    "tokenizer_config.json": 50_000,
}
SMALL_CHECKPOINT_FILES = {
    "adapter_config.json": 900,
    "scheduler.pt": 1_500,
    "rng-rank-00000.pt": 15_000,
    "trainer_state.json": 600,
    "metrics.jsonl": 40_000,
}


def shapes(smoke: bool) -> list[Shape]:
    weights, tokenizer, dataset, adapter, optimizer = (
        (12 * MiB, 1 * MiB, 10 * MiB, 6 * MiB, 3 * MiB)
        if smoke
        else (256 * MiB, 2 * MiB, 100 * MiB, 160 * MiB, 80 * MiB)
    )
    return [
        Shape(
            "model",
            "download",
            {
                "model-00001-of-00002.safetensors": weights,
                "model-00002-of-00002.safetensors": weights,
                "tokenizer.json": tokenizer,
                **SMALL_MODEL_FILES,
            },
        ),
        Shape("dataset", "download", {"train.jsonl": dataset}, single=True),
        Shape(
            "checkpoint",
            "upload",
            {
                "adapter_model.safetensors": adapter,
                "optimizer.pt": optimizer,
                **SMALL_CHECKPOINT_FILES,
            },
        ),
    ]


def write_files(folder: Path, files: dict[str, int]) -> None:
    """Random bytes: nothing on the way can compress them."""
    for name, size in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            left = size
            while left:
                block = min(left, 16 * MiB)
                out.write(os.urandom(block))
                left -= block


# ---------------------------------------------------------------------------
# Contenders


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


# ---------------------------------------------------------------------------
# The run


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@dataclass(frozen=True)
class Measurement:
    mib_per_s: float
    client_cpu_s: float  # this process, every thread: what the client library costs
    server_cpu_s: float  # weed


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


def figures(measurements: list[Measurement], mib: float) -> dict[str, Any]:
    rates = [m.mib_per_s for m in measurements]
    gib = mib / 1024
    return {
        "MiBPerSecond": {k: round(v, 1) for k, v in summary(rates).items()},
        "runs": [round(r, 1) for r in rates],
        "clientCpuSecondsPerGiB": round(
            statistics.median(m.client_cpu_s for m in measurements) / gib, 3
        ),
        "serverCpuSecondsPerGiB": round(
            statistics.median(m.server_cpu_s for m in measurements) / gib, 3
        ),
    }


def shape_result(
    shape: Shape,
    sweep: dict[str, list[Measurement]],
    final: dict[str, list[Measurement]],
    best: str,
    defaults: str,
) -> dict[str, Any]:
    mib = shape.bytes / MiB
    final_figures = {name: figures(ms, mib) for name, ms in final.items()}
    ours = final_figures[KUBETUNE]["MiBPerSecond"]["median"]
    return {
        "direction": shape.direction,
        "files": len(shape.files),
        "MiB": round(mib, 1),
        "sweep": {name: figures(ms, mib) for name, ms in sweep.items()},
        "bestBoto3": best,
        "final": final_figures,
        "ratios": {
            "kubetuneToBestBoto3": round(ours / final_figures[best]["MiBPerSecond"]["median"], 3),
            "kubetuneToBoto3Defaults": round(
                ours / final_figures[defaults]["MiBPerSecond"]["median"], 3
            ),
        },
    }


def table(results: dict[str, Any]) -> str:
    """The final phase: kubetune, the sweep's best boto3 configuration, boto3's defaults."""
    rows = []
    for shape, r in results.items():
        best = r["final"][r["bestBoto3"]]["MiBPerSecond"]["median"]
        for i, (name, f) in enumerate(r["final"].items()):
            rate = f["MiBPerSecond"]
            rows.append(
                [
                    f"{shape}: {r['direction']} {r['files']} files, {r['MiB']:g} MiB"
                    if i == 0
                    else "",
                    name + (" = best in sweep" if name == r["bestBoto3"] else ""),
                    f"{rate['median']:.0f}",
                    f"{rate['min']:.0f}-{rate['max']:.0f}",
                    f"{rate['median'] / best:.2f}",
                    f"{f['clientCpuSecondsPerGiB']:.2f}",
                    f"{f['serverCpuSecondsPerGiB']:.2f}",
                ]
            )
    return markdown_table(
        [
            "shape",
            "client",
            "median MiB/s",
            "range",
            "/ best boto3",
            "client CPU s/GiB",
            "server CPU s/GiB",
        ],
        rows,
    )


def sweep_table(results: dict[str, Any]) -> str:
    rows = [
        [shape, name, f"{f['MiBPerSecond']['median']:.0f}", f"{f['clientCpuSecondsPerGiB']:.2f}"]
        for shape, r in results.items()
        for name, f in r["sweep"].items()
    ]
    return markdown_table(["shape", "client", "median MiB/s", "client CPU s/GiB"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=7, help="final rounds: kubetune against boto3's best"
    )
    parser.add_argument(
        "--sweep-repeat", type=int, default=3, help="rounds of every boto3 configuration"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="small files, one boto3 configuration, one run"
    )
    parser.add_argument(
        "--shapes", nargs="*", choices=["model", "dataset", "checkpoint"], help="only these"
    )
    parser.add_argument("--workdir", type=Path, help="where to put the files and the server's data")
    parser.add_argument(
        "--json", type=Path, help="write the JSON report here (default bench/results/s3.json)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every run")
    args = parser.parse_args()
    if args.smoke:
        args.repeat = args.sweep_repeat = 1
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    report = Report(
        "s3_transfer",
        smoke=args.smoke,
        settings={
            "repeat": args.repeat,
            "sweepRepeat": args.sweep_repeat,
            "shapes": [s.__dict__ for s in shapes(args.smoke)],
        },
    )
    print(report.header())
    results = run(args)
    print("Sweep (every configuration):")
    print(sweep_table(results))
    print("Final (kubetune against the sweep's best boto3 configuration, measured afresh):")
    print(table(results))
    report.finish(results, args.json or (None if args.smoke else RESULTS / "s3.json"))


if __name__ == "__main__":
    main()
