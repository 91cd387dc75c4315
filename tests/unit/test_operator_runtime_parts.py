"""The work queue's guarantees, status merge patches, transition Events, child-change coalescing."""

from __future__ import annotations

import asyncio

from kubetune.operator.events import transition_event
from kubetune.operator.metrics import OperatorMetrics
from kubetune.operator.reconciler import Views, merge_patch
from kubetune.operator.runtime import CHILD_SETTLE_SECONDS, Runtime
from kubetune.operator.workqueue import WorkQueue
from tests.unit.operator_fixtures import settings


def test_a_key_is_queued_once_and_never_processed_twice_at_once() -> None:
    async def scenario() -> list[str]:
        queue = WorkQueue()
        for _ in range(3):
            queue.add("a")
        queue.add("b")
        assert len(queue) == 2
        first = await queue.get()
        queue.add(first)  # changed while being reconciled: not handed to a second worker
        second = await queue.get()
        assert second != first and len(queue) == 0
        queue.done(first)  # ...but queued again once the first reconcile ends
        assert len(queue) == 1
        return [first, second, await queue.get()]

    assert asyncio.run(scenario()) == ["a", "b", "a"]


def test_add_after_keeps_the_earliest_visit() -> None:
    async def scenario() -> None:
        queue = WorkQueue()
        queue.add_after("a", 60)
        queue.add_after("a", 0.01)
        queue.add_after("a", 30)
        assert await asyncio.wait_for(queue.get(), 1) == "a"
        queue.done("a")
        queue.add_after("b", 0.01)
        queue.forget("b")
        await asyncio.sleep(0.05)
        assert len(queue) == 0
        queue.close()

    asyncio.run(scenario())


def test_merge_patch_sets_changes_and_nulls_removals() -> None:
    old = {"phase": "Running", "progress": {"step": 1, "eta": "1m0s"}, "conditions": [1]}
    new = {
        "phase": "Running",
        "progress": {"step": 2},
        "conditions": [1, 2],
        "output": {"adapter": "s3://a/"},
    }
    assert merge_patch(old, new) == {
        "progress": {"step": 2, "eta": None},
        "conditions": [1, 2],
        "output": {"adapter": "s3://a/"},
    }
    assert merge_patch(new, new) == {}


def test_transition_events() -> None:
    tj = {"metadata": {"name": "dolly", "namespace": "team-a", "uid": "u1"}}
    event = transition_event(
        tj,
        phase="Failed",
        reason="BadData",
        message="x" * 5000,
        now="t",
        instance="op-0",
        unique="17a",
    )
    assert (
        event["type"] == "Warning" and event["reason"] == "BadData" and event["action"] == "Failed"
    )
    assert event["metadata"]["name"] == "dolly.17a" and len(event["note"].encode()) <= 1024
    assert event["regarding"] == {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TuningJob",
        "name": "dolly",
        "namespace": "team-a",
        "uid": "u1",
    }
    normal = transition_event(
        tj, phase="Running", reason="Training", message="ok", now="t", instance="op-0", unique="1"
    )
    assert normal["type"] == "Normal"
    # Waiting reasons a person must act on, the image ones as a kubelet reports them.
    for reason in ("Unschedulable", "ErrImagePull", "ErrImageNeverPull", "ImagePullBackOff"):
        event = transition_event(
            tj, phase="Pending", reason=reason, message="", now="t", instance="i", unique="2"
        )
        assert event["type"] == "Warning", reason


def test_a_series_of_child_changes_is_reconciled_once() -> None:
    async def scenario() -> list[object]:
        views = Views(tuningjob=lambda key: None, jobs=lambda key: [], pods=lambda key: [])
        runtime = Runtime(
            settings(workers=2), api=None, metrics=OperatorMetrics(), views=views, identity="t"
        )  # type: ignore[arg-type]
        reconciled: list[object] = []

        async def reconcile(key: object) -> None:
            reconciled.append(key)

        runtime.reconciler.reconcile = reconcile  # type: ignore[method-assign]
        runtime.start()
        for _ in range(3):  # the Job's pod: created, scheduled, started
            runtime.wake_soon(("team-a", "dolly"))
            await asyncio.sleep(0.05)
        assert reconciled == [], "not at once: the series may go on"
        await asyncio.sleep(CHILD_SETTLE_SECONDS + 0.2)
        await runtime.stop()
        return reconciled

    assert asyncio.run(scenario()) == [("team-a", "dolly")]
