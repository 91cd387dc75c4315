"""The reconciler's requests to the API server, with kopf's indices lagging behind.

The API server here is a recording stand-in: a real one cannot be made to deliver a
watch event late on purpose, and the order of the operator's own write, the watch
event it causes and the Job's watch event is exactly what these tests pin down. The
real API server is in tests/integration/test_operator.py and bench/operator_latency.py.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from kubetune.operator.metrics import OperatorMetrics
from kubetune.operator.reconciler import INDEX_GRACE, Reconciler, Views
from tests.unit.operator_fixtures import manifest, settings

KEY = ("team-a", "dolly")


class RecordingApi:
    """Answers the operator's requests as the API server would, and records them."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, ...]] = []
        self.status_writes: list[dict[str, Any]] = []

    async def patch_tuningjob_status(
        self, namespace: str, name: str, patch: dict, *, resource_version: str | None = None
    ) -> dict:
        self.requests.append(("PATCH", "tuningjobs/status", name))
        self.status_writes.append(patch)
        return {}

    async def create_job(self, job: dict) -> dict:
        self.requests.append(("POST", "jobs", job["metadata"]["name"]))
        created = copy.deepcopy(job)
        created["metadata"]["uid"] = "job-uid"
        return created

    async def get_job(self, namespace: str, name: str) -> dict | None:
        self.requests.append(("GET", "jobs", name))
        return None

    async def create_event(self, event: dict) -> None:
        self.requests.append(("POST", "events", event["regarding"]["name"]))


class Indices:
    """What kopf's indices hold: changed by hand, to lag as watches do."""

    def __init__(self) -> None:
        body = manifest()
        body["metadata"] |= {
            "uid": "tj-uid",
            "generation": 1,
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        }
        self.tuningjob: dict[str, Any] = body
        self.jobs: list[dict[str, Any]] = []

    def views(self) -> Views:
        return Views(
            tuningjob=lambda key: self.tuningjob, jobs=lambda key: self.jobs, pods=lambda key: []
        )


def test_a_job_just_created_is_not_created_again_while_its_watch_event_is_on_the_way() -> None:
    async def scenario() -> list[tuple[str, ...]]:
        api, indices, now = RecordingApi(), Indices(), [1000.0]
        reconciler = Reconciler(
            settings(), api, indices.views(), OperatorMetrics(), identity="t", clock=lambda: now[0]
        )  # type: ignore[arg-type]
        await reconciler.reconcile(KEY)  # new: lock the spec, create the Job
        # Our own status write comes back through the TuningJob watch first...
        indices.tuningjob["status"] = {"jobName": "dolly", "phase": "Pending"}
        indices.tuningjob["metadata"]["resourceVersion"] = "2"
        assert await reconciler.reconcile(KEY) == INDEX_GRACE
        # ...then the Job's own event.
        job = {
            "metadata": {
                "name": "dolly",
                "namespace": "team-a",
                "uid": "job-uid",
                "ownerReferences": [{"uid": "tj-uid", "controller": True}],
            },
            "spec": {"suspend": False},
            "status": {},
        }
        indices.jobs = [job]
        await reconciler.reconcile(KEY)
        await reconciler.close()
        return api.requests

    requests = asyncio.run(scenario())
    assert [r for r in requests if r[1] == "jobs"] == [("POST", "jobs", "dolly")], requests


def test_a_job_that_never_shows_up_is_created_again() -> None:
    async def scenario() -> list[tuple[str, ...]]:
        api, indices, now = RecordingApi(), Indices(), [1000.0]
        reconciler = Reconciler(
            settings(), api, indices.views(), OperatorMetrics(), identity="t", clock=lambda: now[0]
        )  # type: ignore[arg-type]
        await reconciler.reconcile(KEY)
        indices.tuningjob["status"] = {"jobName": "dolly", "phase": "Pending"}
        now[0] += INDEX_GRACE + 1  # deleted before the index ever saw it
        await reconciler.reconcile(KEY)
        await reconciler.close()
        return api.requests

    requests = asyncio.run(scenario())
    assert [r for r in requests if r[1] == "jobs"] == [("POST", "jobs", "dolly")] * 2, requests


class SlowEventsApi(RecordingApi):
    def __init__(self) -> None:
        super().__init__()
        self.in_flight = self.most_in_flight = 0

    async def create_event(self, event: dict) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.02)
        self.in_flight -= 1
        await super().create_event(event)


def test_events_are_posted_a_few_at_a_time_off_the_reconcile_path() -> None:
    async def scenario() -> SlowEventsApi:
        api, indices = SlowEventsApi(), Indices()
        reconciler = Reconciler(
            settings(), api, indices.views(), OperatorMetrics(), identity="t", max_event_posts=4
        )  # type: ignore[arg-type]
        for i in range(20):  # a burst of new TuningJobs: each posts its first Event
            await reconciler.reconcile(("team-a", f"dolly-{i}"))
        while reconciler._background:
            await asyncio.sleep(0.01)
        return api

    api = asyncio.run(scenario())
    assert sum(1 for r in api.requests if r[1] == "events") == 20
    assert api.most_in_flight == 4, (
        "a burst of Events waits its turn rather than crowding the API server"
    )


# --- issue 11: faults the reconciler must survive -------------------------------------


class FailingCreateApi(RecordingApi):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def create_job(self, job: dict) -> dict:
        self.requests.append(("POST", "jobs", job["metadata"]["name"]))
        raise self.error


def test_a_job_create_error_of_any_status_reaches_the_status() -> None:
    from kubetune.operator.kubeapi import ApiError

    async def scenario() -> tuple[float | None, RecordingApi]:
        api = FailingCreateApi(ApiError(500, "InternalError", "etcdserver: request timed out"))
        reconciler = Reconciler(settings(), api, Indices().views(), OperatorMetrics(), identity="t")  # type: ignore[arg-type]
        delay = await reconciler.reconcile(KEY)
        await reconciler.close()
        return delay, api

    delay, api = asyncio.run(scenario())
    last = api.status_writes[-1]
    assert last["reason"] == "JobCreateFailed"
    assert "etcdserver: request timed out" in last["message"]
    assert delay == settings().resync_seconds  # looked at again, not given up


def test_no_replacement_job_while_a_pod_of_the_old_one_still_runs() -> None:
    # The Job was deleted by hand (or the TuningJob re-created) while its pod still
    # runs its grace period: a second trainer on the same destination must wait.
    from tests.unit.operator_fixtures import pod, running

    async def scenario() -> RecordingApi:
        api, indices = RecordingApi(), Indices()
        indices.tuningjob["status"] = {"jobName": "dolly", "phase": "Running"}
        old_pod = pod("dolly-old", phase="Running", state=running(), deleting=True)
        pods = [old_pod]
        views = Views(
            tuningjob=lambda key: indices.tuningjob, jobs=lambda key: [], pods=lambda key: pods
        )
        reconciler = Reconciler(settings(), api, views, OperatorMetrics(), identity="t")  # type: ignore[arg-type]
        await reconciler.reconcile(KEY)
        assert not [r for r in api.requests if r[1] == "jobs"]
        assert api.status_writes[-1]["reason"] == "WaitingForOldPods"
        assert "dolly-old" in api.status_writes[-1]["message"]
        old_pod["status"]["phase"] = "Failed"  # it ended
        await reconciler.reconcile(KEY)
        await reconciler.close()
        return api

    api = asyncio.run(scenario())
    assert [r for r in api.requests if r[1] == "jobs"] == [("POST", "jobs", "dolly")]


class VersionedApi(RecordingApi):
    """Answers status patches with a new resourceVersion, as the API server does."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 10

    async def patch_tuningjob_status(self, *args: Any, **kwargs: Any) -> dict:
        await super().patch_tuningjob_status(*args, **kwargs)
        self.version += 1
        return {"metadata": {"resourceVersion": str(self.version)}}


def _running_job() -> dict:
    return {
        "metadata": {
            "name": "dolly",
            "namespace": "team-a",
            "uid": "job-uid",
            "ownerReferences": [{"uid": "tj-uid", "controller": True}],
        },
        "spec": {"suspend": False},
        "status": {"active": 1},
    }


def test_a_status_written_by_someone_else_is_corrected() -> None:
    async def scenario() -> VersionedApi:
        api, indices = VersionedApi(), Indices()
        reconciler = Reconciler(settings(), api, indices.views(), OperatorMetrics(), identity="t")  # type: ignore[arg-type]
        indices.jobs = [_running_job()]
        indices.tuningjob["status"] = {"jobName": "dolly"}
        await reconciler.reconcile(KEY)
        ours = api.status_writes[-1]
        assert ours.get("phase") == "Pending", ours
        # The index catches up with our write: nothing to write again.
        indices.tuningjob["status"] = {**indices.tuningjob["status"], **ours}
        indices.tuningjob["metadata"]["resourceVersion"] = str(api.version)
        writes = len(api.status_writes)
        await reconciler.reconcile(KEY)
        assert len(api.status_writes) == writes
        # Someone else marks it Succeeded while its Job still runs.
        indices.tuningjob["status"] = {**indices.tuningjob["status"], "phase": "Succeeded"}
        indices.tuningjob["metadata"]["resourceVersion"] = "99"
        await reconciler.reconcile(KEY)
        await reconciler.close()
        assert len(api.status_writes) == writes + 1, "the foreign write is put right"
        return api

    api = asyncio.run(scenario())
    assert api.status_writes[-1]["phase"] == "Pending"


def test_a_lagging_index_is_not_taken_for_a_foreign_write() -> None:
    async def scenario() -> VersionedApi:
        api, indices = VersionedApi(), Indices()
        reconciler = Reconciler(settings(), api, indices.views(), OperatorMetrics(), identity="t")  # type: ignore[arg-type]
        indices.jobs = [_running_job()]
        indices.tuningjob["status"] = {"jobName": "dolly"}
        await reconciler.reconcile(KEY)
        writes = len(api.status_writes)
        await reconciler.reconcile(KEY)  # the index still shows the version before our write
        await reconciler.close()
        assert len(api.status_writes) == writes
        return api

    asyncio.run(scenario())


def _trainer_pod(uid: str, phase: str, state: dict) -> dict:
    from tests.unit.operator_fixtures import pod

    body = pod(f"dolly-{uid}", phase=phase, state=state, node="gpu-1")
    body["metadata"] |= {"uid": uid, "ownerReferences": [{"uid": "job-uid", "controller": True}]}
    return body


def test_restarts_count_preempted_pods_after_the_job_controller_removed_them() -> None:
    # A preempted pod (exit 75) is ignored by the Job's podFailurePolicy: the Job's
    # `failed` stays 0, and the Job controller deletes the pod once it is replaced. What a
    # real kubelet and Job controller do (seen on kind): the count must not fall back to 0.
    from tests.unit.operator_fixtures import running, terminated

    async def scenario() -> list[int | None]:
        api, indices = VersionedApi(), Indices()
        indices.jobs = [_running_job()]
        indices.tuningjob["status"] = {"jobName": "dolly"}
        pods: list[dict] = []
        views = Views(
            tuningjob=lambda key: indices.tuningjob,
            jobs=lambda key: indices.jobs,
            pods=lambda key: pods,
        )
        reconciler = Reconciler(settings(), api, views, OperatorMetrics(), identity="t")  # type: ignore[arg-type]
        seen: list[int | None] = []

        async def look(*current: dict) -> None:
            pods[:] = current
            await reconciler.reconcile(KEY)
            seen.append(reconciler._memory[KEY].status.restarts)

        await look(_trainer_pod("a", "Running", running()))
        await look(_trainer_pod("a", "Failed", terminated(75)))  # preempted
        await look(_trainer_pod("b", "Running", running()))  # a replaced and removed
        await look(_trainer_pod("b", "Failed", terminated(75)))  # preempted again
        await look(_trainer_pod("b", "Failed", terminated(75)))  # seen twice: counted once
        await look(_trainer_pod("c", "Running", running()))
        await reconciler.close()
        # A replica that takes over trusts the stored count for the failed pod it sees.
        indices.tuningjob["status"] = {"jobName": "dolly", "restarts": seen[-1]}
        indices.tuningjob["metadata"]["resourceVersion"] = "500"
        successor = Reconciler(settings(), api, views, OperatorMetrics(), identity="u")  # type: ignore[arg-type]
        pods[:] = [_trainer_pod("c", "Failed", terminated(75))]
        await successor.reconcile(KEY)
        pods[:] = [
            _trainer_pod("c", "Failed", terminated(75)),
            _trainer_pod("d", "Running", running()),
        ]
        await successor.reconcile(KEY)
        seen.append(successor._memory[KEY].status.restarts)
        await successor.close()
        return seen

    assert asyncio.run(scenario()) == [0, 1, 1, 2, 2, 2, 2]
