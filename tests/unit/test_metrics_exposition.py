"""`promtool check metrics` on what the operator's and the trainer's /metrics really serve.

promtool (Prometheus' own linter for the exposition format: names, suffixes, help
texts, types) is built from the Go module proxy by hack/go-tool.sh (`make tools`). Both
endpoints are started here on loopback, with every metric holding a sample, and read
over HTTP as Prometheus would.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from kubetune.operator.metrics import HttpServers, OperatorMetrics
from kubetune.trainer.telemetry import Telemetry
from tests.unit.chart_support import go_tool


def promtool_check_metrics(exposition: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [go_tool("promtool"), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_trainer_endpoint_passes_promtool(tmp_path: Path) -> None:
    telemetry = Telemetry(tmp_path / "metrics.jsonl")
    port = telemetry.serve(0)
    assert port
    try:
        telemetry.set_phase("training")
        telemetry.step.set(3)
        telemetry.total_steps.set(10)
        telemetry.loss.set(1.25)
        telemetry.tokens.inc(1200)
        telemetry.gpu_memory.labels(kind="allocated").set(2**30)
        telemetry.add_s3_bytes("download", 4096)
        exposition = scrape(port)
    finally:
        telemetry.close()
    assert "kubetune_trainer_tokens_total 1200.0" in exposition
    result = promtool_check_metrics(exposition)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result


def test_the_operator_endpoint_passes_promtool() -> None:
    metrics = OperatorMetrics(phases=lambda: ["Running", "Succeeded", "Running", None])
    metrics.reconcile_seconds.observe(0.02)
    metrics.start_latency_seconds.observe(3)
    metrics.transitions_total.labels("Running", "").inc()
    port = free_port()

    async def serve_and_scrape() -> str:
        servers = HttpServers(metrics, health=lambda: {"ok": True})
        await servers.start(port, 0, host="127.0.0.1")
        try:
            return await asyncio.to_thread(scrape, port)
        finally:
            await servers.stop()

    exposition = asyncio.run(serve_and_scrape())
    assert 'kubetune_operator_tuningjobs{phase="Running"} 2.0' in exposition
    result = promtool_check_metrics(exposition)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result


@pytest.mark.parametrize(
    ("exposition", "complaint"),
    [
        (
            "# HELP jobs_done Jobs.\n# TYPE jobs_done counter\njobs_done 1\n",
            'should have "_total" suffix',
        ),
        ("# TYPE kubetune_x gauge\nkubetune_x 1\n", "no help text"),
    ],
    ids=["counter-without-total", "gauge-without-help"],
)
def test_promtool_flags_what_the_endpoints_must_not_serve(exposition: str, complaint: str) -> None:
    """The checks above are not vacuous: promtool fails a badly named or undocumented metric."""
    result = promtool_check_metrics(exposition)
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr, result
