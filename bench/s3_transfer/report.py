"""The S3 benchmark's report: each contender's figures per shape (median and range of
MiB/s, CPU seconds per GiB), kubetune's ratios, and the tables (bench/s3_transfer)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.common import markdown_table, summary
from bench.s3_transfer.contenders import KUBETUNE
from bench.s3_transfer.shapes import MiB, Shape


@dataclass(frozen=True)
class Measurement:
    mib_per_s: float
    client_cpu_s: float  # this process, every thread: what the client library costs
    server_cpu_s: float  # weed


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
