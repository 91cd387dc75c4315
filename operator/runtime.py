"""The running parts of an operator replica: queue, workers, reconciler, HTTP servers.

`Runtime` is created when kopf starts (the startup handler) and stopped when it stops;
the kopf handlers only call `wake(key)`. Workers take keys from the queue, reconcile,
and schedule the next visit the reconciler asks for, backing off on errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from typing import Any

import aiohttp

from kubetune.operator.kubeapi import KubeApi
from kubetune.operator.metrics import OperatorMetrics
from kubetune.operator.reconciler import Key, Reconciler, Views
from kubetune.operator.settings import Settings
from kubetune.operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
CHILD_SETTLE_SECONDS = 0.5


class Runtime:
    def __init__(
        self,
        settings: Settings,
        api: KubeApi,
        metrics: OperatorMetrics,
        views: Views,
        identity: str,
    ):
        self.settings = settings
        self.api = api
        self.metrics = metrics
        self.queue = WorkQueue()
        self.http = aiohttp.ClientSession()
        self.reconciler = Reconciler(
            settings, api, views, metrics, identity=identity, http=self.http, wake=self.queue.add
        )
        self._workers: list[asyncio.Task[None]] = []
        self._failures: dict[Hashable, int] = {}
        self.started_at = time.monotonic()

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"kubetune reconciler {i}")
            for i in range(self.settings.workers)
        ]
        log.info("started %d reconcile workers", len(self._workers))

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        await self.reconciler.close()
        self.queue.close()
        await self.http.close()

    def wake(self, key: Key, urgent: bool = False) -> None:
        self.queue.add(key, urgent)

    def wake_soon(self, key: Key) -> None:
        """Reconcile in CHILD_SETTLE_SECONDS: the changes of a Job and its pods come in
        quick series, and one reconcile (one status write) can cover a whole series."""
        self.queue.add_after(key, CHILD_SETTLE_SECONDS)

    def healthy(self) -> bool:
        return bool(self._workers) and not any(t.done() for t in self._workers)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            started = time.perf_counter()
            try:
                delay = await self.reconciler.reconcile(key)  # type: ignore[arg-type]
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any error: retry this key later, keep the worker alive
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(MAX_BACKOFF, 0.5 * 2**failures)
                log.warning(
                    "reconciling %s failed (%s); retrying in %.1fs",
                    key,
                    e,
                    delay,
                    exc_info=failures == 1,
                )
            finally:
                self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
                self.queue.done(key)
            if delay is None:
                self.queue.forget(key)
            else:
                self.queue.add_after(key, delay)


def health_report(runtime: Runtime | None, leading: bool | None) -> dict[str, Any]:
    """What /healthz says: a standby is healthy while it waits; a leader while its workers run."""
    if runtime is None:
        return {"ok": True, "role": "standby" if leading is False else "starting"}
    return {"ok": runtime.healthy(), "role": "leader", "queued": len(runtime.queue)}
