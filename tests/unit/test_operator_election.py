"""The leader fence: a replica writes only while the Lease is surely its own.

The API here is a stand-in Lease store with a hand-driven clock: a pause of the
process (SIGSTOP, a long GC, a frozen VM) is a jump of the monotonic clock, which is
exactly what the fence sees. The real API server and a real SIGSTOP are in
tests/faults/test_operator_faults.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubetune.operator.election import FencedApi, LeaseConfig, LeaseElector, NotLeading

CONFIG = LeaseConfig(
    namespace="ops", name="kubetune", identity="a", duration=15, renew_deadline=10, retry=2
)


class LeaseStore:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.hang = False
        self.writes: list[str] = []

    async def get_lease(self, namespace: str, name: str) -> dict | None:
        if self.hang:
            await asyncio.sleep(3600)
        return self.lease

    async def create_lease(self, body: dict) -> dict:
        self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
        return self.lease

    async def replace_lease(self, body: dict) -> dict:
        self.lease = body
        return body

    async def patch_tuningjob_status(self, *args: Any, **kwargs: Any) -> dict:
        self.writes.append("status")
        return {}


def test_the_fence_closes_when_the_renew_deadline_passes_without_a_renewal() -> None:
    async def scenario() -> None:
        now = [100.0]
        store = LeaseStore()
        elector = LeaseElector(store, CONFIG, clock=lambda: now[0])  # type: ignore[arg-type]
        await elector.acquire()
        fenced = FencedApi(store, elector.write_budget)  # type: ignore[arg-type]
        assert elector.write_budget() == 10
        await fenced.patch_tuningjob_status("ns", "x", {})
        now[0] += 10.5  # paused (SIGSTOP) past the renew deadline
        with pytest.raises(NotLeading):
            await fenced.patch_tuningjob_status("ns", "x", {})
        assert store.writes == ["status"]

    asyncio.run(scenario())


def test_a_hung_renewal_is_cut_off_at_the_deadline() -> None:
    async def scenario() -> None:
        store = LeaseStore()
        config = LeaseConfig(
            namespace="ops", name="k", identity="a", duration=1.5, renew_deadline=1.0, retry=0.2
        )
        elector = LeaseElector(store, config)  # type: ignore[arg-type]
        await elector.acquire()
        store.hang = True  # the API server stops answering
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(elector.hold(), 5)
        took = loop.time() - started
        assert not elector.leading and elector.write_budget() == 0
        assert took < 1.0 + 0.3, f"hold() returned after {took:.2f}s, past the renew deadline"

    asyncio.run(scenario())


def test_a_renewal_that_completes_after_a_pause_does_not_count() -> None:
    async def scenario() -> None:
        now = [100.0]
        store = LeaseStore()
        elector = LeaseElector(store, CONFIG, clock=lambda: now[0])  # type: ignore[arg-type]
        await elector.acquire()

        async def slow_get(namespace: str, name: str) -> dict | None:
            now[0] += 11  # the process stopped in the middle of renewing
            return store.lease

        store.get_lease = slow_get  # type: ignore[method-assign]
        await asyncio.wait_for(elector.hold(), 5)
        assert elector.write_budget() == 0

    asyncio.run(scenario())


class FlakyLister:
    server = "https://10.0.0.1:6443"

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    async def list_tuningjobs(self, namespace: str | None, *, limit: int = 1) -> dict:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {"items": []}


def test_an_api_server_briefly_unreachable_at_start_is_retried_not_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import aiohttp

    from kubetune.operator import main
    from kubetune.operator.kubeapi import ApiError
    from kubetune.operator.settings import Settings

    async def no_wait(seconds: float) -> None:
        return None

    monkeypatch.setattr(main.asyncio, "sleep", no_wait)
    api = FlakyLister(
        [aiohttp.ClientConnectionError("connection refused"), ApiError(503, "x", "starting")]
    )
    asyncio.run(main.wait_for_tuningjobs(api, Settings()))  # type: ignore[arg-type]
    assert api.calls == 3


def test_a_missing_crd_is_a_config_error_at_once_and_unreachable_gives_up_with_exit_1() -> None:
    import aiohttp

    from kubetune.operator import main
    from kubetune.operator.kubeapi import NotFound
    from kubetune.operator.settings import Settings

    missing = FlakyLister([NotFound(404, "NotFound", "no such resource")])
    with pytest.raises(main.ClusterNotReady, match="CustomResourceDefinition"):
        asyncio.run(main.wait_for_tuningjobs(missing, Settings()))  # type: ignore[arg-type]
    assert missing.calls == 1
    down = FlakyLister([aiohttp.ClientConnectionError("refused")] * 10)
    with pytest.raises(main.ClusterUnreachable, match="exiting to be restarted"):
        asyncio.run(main.wait_for_tuningjobs(down, Settings(), patience=0.5))  # type: ignore[arg-type]
