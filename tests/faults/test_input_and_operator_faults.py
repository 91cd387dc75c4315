"""Oversized input and a hostile /metrics, against the real reader and the real scrape.

Each test's docstring is its row in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import gzip
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from kubetune.api.contract import ExitCode

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
GiB = 1 << 30


def _prepare(tmp_path: Path, source: Path, tiny_model: Path) -> tuple[int, str, float]:
    """`kubetune prepare` in a subprocess: (exit code, output, its peak RSS in MiB)."""
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubetune.dev/v1alpha1",
                "kind": "TuningJob",
                "metadata": {"name": "bad-input"},
                "spec": {
                    "model": {"source": str(tiny_model)},
                    "dataset": {"source": str(source), "onInvalid": "skip"},
                    "output": {"destination": str(tmp_path / "out")},
                },
            }
        )
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetune",
            "prepare",
            "-f",
            str(manifest),
            "-o",
            str(tmp_path / "p"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "PATH": "/usr/bin:/bin",
            "KUBETUNE_SCRATCH_DIR": str(tmp_path / "scratch"),
            "HOME": str(tmp_path),
        },
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return result.returncode, result.stdout + result.stderr, max(peak, before) / 1024


def _bomb(path: Path, gib: int) -> Path:
    member = gzip.compress((b" " * (MiB - 1) + b"\n") * 16, compresslevel=9)
    with path.open("wb") as f:
        for _ in range(gib * 64):
            f.write(member)
    return path


@pytest.mark.parametrize("case", ["gzip-bomb", "2gib-line", "200kib-csv-field"])
def test_oversized_input_is_refused_with_a_message_not_an_oom_kill(
    case: str, tmp_path: Path, tiny_model: Path
) -> None:
    """A gzip bomb (8 GiB from a few MiB), a 2 GiB line, a 200 KiB CSV field: each is
    refused by `kubetune prepare` with exit 65 and a message naming the file (and line),
    under onInvalid: skip too, and the process's memory stays far below the sizes
    involved (before: read and gunzipped whole, OOM-killed; the CSV field silently
    dropped the rest of the file)."""
    if case == "gzip-bomb":
        source, expected = _bomb(tmp_path / "bomb.jsonl.gz", gib=8), "refused as a gzip bomb"
    elif case == "2gib-line":
        source = tmp_path / "huge.jsonl"
        source.write_bytes(b'{"prompt": "a", "completion": "b"}\n')
        with source.open("r+b") as f:
            f.truncate(2 * GiB)  # sparse: no newline after the first line
        expected = f"{source}:2: a line longer than 64 MiB"
    else:
        rows = [f"q{i},a{i}" for i in range(1000)]
        rows[3] = "q3," + "x" * (200 * 1024)
        source = tmp_path / "data.csv"
        source.write_text("prompt,completion\n" + "\n".join(rows) + "\n")
        expected = f"{source}:5: a CSV field longer than 128 KiB"
    code, output, peak_mib = _prepare(tmp_path, source, tiny_model)
    assert code == ExitCode.BAD_DATA, output
    assert expected in output
    assert peak_mib < 1500, f"peak RSS {peak_mib:.0f} MiB"


def test_a_1gib_metrics_body_leaves_the_operator_memory_and_loop_bounded() -> None:
    """A trainer pod (a tenant's image) serving 1 GiB on /metrics: the operator's scrape
    reads at most 256 KiB of it and drops it, its memory grows by less than 4 MiB, and
    its event loop (which renews the Lease) is never blocked for long (before: the
    whole body was read into memory and parsed on the loop)."""
    from aiohttp import ClientSession, web

    from kubetune.operator.progress import scrape

    served = {"bytes": 0}

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"kubetune_trainer_step 1\n" * 4096
        try:
            while served["bytes"] < GiB:
                await response.write(chunk)
                served["bytes"] += len(chunk)
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    async def scenario() -> tuple[object, float, int]:
        app = web.Application()
        app.router.add_get("/metrics", huge)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        worst_gap, stop = [0.0], asyncio.Event()

        async def ticker() -> None:  # what the Lease renewal would experience
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                worst_gap[0] = max(worst_gap[0], now - last)
                last = now

        tick = asyncio.create_task(ticker())
        tracemalloc.start()
        async with ClientSession() as session:
            sample = await scrape(session, f"http://127.0.0.1:{port}/metrics", 30.0, 0.0)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stop.set()
        await tick
        await runner.cleanup()
        return sample, worst_gap[0], peak

    sample, worst_gap, peak = asyncio.run(scenario())
    assert sample is None, "an oversized body is not a sample"
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB while scraping"
    assert served["bytes"] < 256 * MiB, "the operator hung up long before the end"
    assert worst_gap < 1.0, f"the event loop stalled for {worst_gap:.2f}s"


def test_a_big_but_allowed_metrics_body_is_parsed_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiohttp import ClientSession, web

    from kubetune.operator import progress

    threads: list[str] = []
    real = progress.parse_metrics

    def recording(text: str, at: float) -> progress.MetricsSample:
        threads.append(threading.current_thread().name)
        return real(text, at)

    monkeypatch.setattr(progress, "parse_metrics", recording)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="kubetune_trainer_step 7\nkubetune_trainer_total_steps 10\n")

    async def scenario() -> object:
        app = web.Application()
        app.router.add_get("/metrics", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with ClientSession() as session:
            sample = await progress.scrape(session, f"http://127.0.0.1:{port}/metrics", 5.0, 1.0)
        await runner.cleanup()
        return sample

    sample = asyncio.run(scenario())
    assert sample is not None and sample.step == 7  # type: ignore[attr-defined]
    assert threads and threads[0] != threading.main_thread().name
