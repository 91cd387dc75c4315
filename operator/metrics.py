"""The operator's own Prometheus metrics, and the small HTTP servers for /metrics and probes.

Names (documented in docs/operator.md): kubetune_operator_tuningjobs{phase} (a gauge computed at
scrape time from what the operator sees), _reconcile_seconds (histogram),
_start_latency_seconds (TuningJob created → Job created; creationTimestamp has a
resolution of one second, so this histogram does too: bench/ measures finer), and
_transitions_total{phase,reason}. Each operator run has its own registry.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from typing import Any, get_args

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubetune.api.status import Phase

log = logging.getLogger(__name__)

PHASES: tuple[str, ...] = get_args(Phase)


class _PhaseCollector(Collector):
    def __init__(self, phases: Callable[[], Iterable[str | None]]):
        self._phases = phases

    def collect(self) -> Iterable[GaugeMetricFamily]:
        counts = Tally(p for p in self._phases() if p)
        family = GaugeMetricFamily(
            "kubetune_operator_tuningjobs",
            "TuningJobs the operator sees, by phase.",
            labels=["phase"],
        )
        for phase in PHASES:
            family.add_metric([phase], counts.get(phase, 0))
        yield family


class _PendingCollector(Collector):
    """How long the longest-waiting TuningJob has been Pending (0 when none is): the
    chart's TuningJobStuckPending alert fires on it."""

    def __init__(self, pending_since: Callable[[], Iterable[float]], clock: Callable[[], float]):
        self._pending_since = pending_since
        self._clock = clock

    def collect(self) -> Iterable[GaugeMetricFamily]:
        since = list(self._pending_since())
        yield GaugeMetricFamily(
            "kubetune_operator_pending_oldest_seconds",
            "Seconds the TuningJob that has waited longest in phase Pending has been waiting.",
            value=max(0.0, self._clock() - min(since)) if since else 0.0,
        )


class OperatorMetrics:
    def __init__(
        self,
        phases: Callable[[], Iterable[str | None]] = tuple,
        pending_since: Callable[[], Iterable[float]] = tuple,
        clock: Callable[[], float] = time.time,
    ):
        self.registry = CollectorRegistry()
        self.registry.register(_PhaseCollector(phases))
        self.registry.register(_PendingCollector(pending_since, clock))
        self.reconcile_seconds = Histogram(
            "kubetune_operator_reconcile_seconds",
            "Time to reconcile one TuningJob.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.start_latency_seconds = Histogram(
            "kubetune_operator_start_latency_seconds",
            "From a TuningJob's creation to its Job's creation (1 s resolution).",
            buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.transitions_total = Counter(
            "kubetune_operator_transitions",
            "TuningJob phase or reason changes, by the phase and reason entered.",
            ["phase", "reason"],
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class HttpServers:
    """/metrics on one port, /healthz and /readyz on another (0 turns either off)."""

    def __init__(self, metrics: OperatorMetrics, health: Callable[[], Mapping[str, Any]]):
        self._metrics = metrics
        self._health = health
        self._runners: list[web.AppRunner] = []

    async def start(self, metrics_port: int, health_port: int, host: str = "0.0.0.0") -> None:
        if metrics_port:
            app = web.Application()
            app.router.add_get("/metrics", self._serve_metrics)
            await self._start(app, host, metrics_port)
        if health_port:
            app = web.Application()
            app.router.add_get("/healthz", self._serve_health)
            app.router.add_get("/readyz", self._serve_health)
            await self._start(app, host, health_port)

    async def _start(self, app: web.Application, host: str, port: int) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runners.append(runner)
        log.info(
            "serving %s on port %s",
            ", ".join(r.resource.canonical for r in app.router.routes() if r.resource),
            port,
        )

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def _serve_metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.exposition(), content_type="text/plain", charset="utf-8"
        )

    async def _serve_health(self, _: web.Request) -> web.Response:
        report = dict(self._health())
        return web.json_response(report, status=200 if report.get("ok") else 503)
