"""Reconciling one TuningJob: the decisions between the pure parts and the API calls.

`Reconciler.reconcile(key)` is level-triggered: it reads the TuningJob, its Job and its
pods from kopf's in-memory indices (no API reads), validates the spec, makes the Job
exist with the right suspend flag, computes the status (plus progress from the
trainer's metrics while it runs) and patches the status only when it changed, with an
Event for each change of phase or reason. It returns when to look again.

Restart safety: the Job's name is deterministic and kopf fills the indices before any
handler runs, so a restarted operator finds the Job it made; a 409 on create means
"already there": the Job is adopted if it is ours. The status a replica last wrote is
remembered so that a lagging index never causes a duplicate Event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kubetune.api.contract import METRICS_PORT
from kubetune.api.manifest import SpecError, parse_tuningjob
from kubetune.api.status import Progress, TuningJobStatus
from kubetune.api.timestamps import micro_time, parse_rfc3339, rfc3339
from kubetune.api.v1alpha1 import TuningJob
from kubetune.operator.builders import (
    build_job,
    build_validate_job,
    child_name,
    is_validate_job,
)
from kubetune.operator.events import WARNING_REASONS, transition_event
from kubetune.operator.kubeapi import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    Invalid,
    KubeApi,
    NotFound,
)
from kubetune.operator.metrics import OperatorMetrics
from kubetune.operator.observe import (
    Observation,
    invalid_spec,
    next_status,
    observe,
    validating,
)
from kubetune.operator.progress import MetricsSample, progress_from, scrape
from kubetune.operator.settings import Settings
from kubetune.operator.validation import validate

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, child name): see builders.child_name
Body = Mapping[str, Any]

# How soon to look again when the index has not caught up with our own write yet.
STALE_RETRY = 0.5
# How long a Job this replica created is trusted to exist while the index has not shown
# it yet (its watch event is on the way): no second create, which would only get a 409.
INDEX_GRACE = 10.0

_WAITING_FOR_POD = Observation(
    "Pending", "PodCreating", "waiting for the Job controller to create the trainer pod"
)
_WAITING_FOR_VALIDATION = Observation(
    "Validating",
    "PodCreating",
    "waiting for the Job controller to create the Validating step's pod (CPU only)",
)


@dataclass
class Views:
    """Read access to what kopf's indices hold, by key."""

    tuningjob: Callable[[Key], Body | None]
    jobs: Callable[[Key], Sequence[Body]]
    pods: Callable[[Key], Sequence[Body]]


@dataclass(frozen=True)
class _Retry:
    """The Job was not created: reconcile again after `after` seconds (None: on the next change)."""

    after: float | None


@dataclass
class _Memory:
    """What this replica remembers about one TuningJob between reconciles."""

    uid: str
    status: TuningJobStatus
    # Metrics of the running pod: (pod uid, first read, latest read); the first paces the ETA.
    samples: tuple[str, MetricsSample, MetricsSample] | None = None
    last_scrape: float = 0.0
    scraping: bool = False
    # When this replica created the Job, until the Job index shows it.
    job_created_at: float | None = None
    created_name: str | None = None  # the Job created at job_created_at
    # The TuningJob's resourceVersion just before and just after this replica's last
    # status write: an index showing either is our own view (current or lagging); any
    # other version with another status is someone else's write, to be corrected.
    written_over: tuple[str | None, str | None] = (None, None)
    # The failed trainer pods already in status.restarts, and the Job they belong to.
    counted_failures: tuple[str, frozenset[str]] | None = None


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        api: KubeApi,
        views: Views,
        metrics: OperatorMetrics,
        *,
        identity: str,
        http: Any = None,  # an aiohttp.ClientSession for the trainers' metrics
        wake: Callable[[Key], None] = lambda key: None,
        clock: Callable[[], float] = time.time,
        max_scrapes: int = 32,
        max_event_posts: int = 4,
    ):
        self.settings = settings
        self.api = api
        self.views = views
        self.metrics = metrics
        self.identity = identity
        self.http = http
        self.clock = clock
        self.wake = wake
        self._memory: dict[Key, _Memory] = {}
        self._scrapes = asyncio.Semaphore(max_scrapes)
        # Events wait their turn: under a burst they must not take the API server's time
        # (and the connection pool) from the requests that start Jobs.
        self._event_posts = asyncio.Semaphore(max_event_posts)
        self._background: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def forget(self, key: Key) -> None:
        self._memory.pop(key, None)

    def known_phases(self) -> list[str | None]:
        return [m.status.phase for m in self._memory.values()]

    def pending_since(self) -> list[float]:
        """When each Pending TuningJob started waiting: the last move of its Running condition."""
        since = []
        for memory in self._memory.values():
            if memory.status.phase != "Pending":
                continue
            running = memory.status.condition("Running")
            if running is not None and running.last_transition_time:
                since.append(_timestamp(running.last_transition_time))
        return since

    async def reconcile(self, key: Key) -> float | None:
        """Bring one TuningJob's Job and status up to date; return seconds until the next look."""
        body = self.views.tuningjob(key)
        if body is None:
            self.forget(key)
            return None
        metadata = body["metadata"]
        if metadata.get("deletionTimestamp"):
            return None  # the garbage collector removes the Job and pods; S3 outputs stay
        uid, generation = metadata["uid"], int(metadata.get("generation") or 1)
        memory = self._memory.get(key)
        if memory is None or memory.uid != uid:
            memory = _Memory(
                uid=uid, status=TuningJobStatus.model_validate(body.get("status") or {})
            )
            self._memory[key] = memory
        self._adopt_foreign_status(key, body, memory)
        old = memory.status
        source = f"TuningJob {metadata['namespace']}/{metadata['name']}"
        job = self._owned_job(key, uid)

        if (
            old.terminal
            and (old.job_name or old.observed_generation == generation)
            and (job is None or _job_finished(job))
        ):
            # Final. A finished Job may be gone (ttlSecondsAfterFinished): never recreate it.
            if old.observed_generation != generation:
                await self._write(
                    key, body, memory, old.model_copy(update={"observed_generation": generation})
                )
            return None

        validation = self._owned_job(key, uid, validation=True)
        shown = {j["metadata"]["name"] for j in (job, validation) if j is not None}
        if memory.created_name in shown:
            memory.job_created_at = memory.created_name = None
        elif (
            memory.job_created_at is not None and self.clock() - memory.job_created_at < INDEX_GRACE
        ):
            # Woken by our own status write before the Job's watch event arrived: the
            # Job exists and its event will wake this TuningJob again.
            return INDEX_GRACE
        if job is None and validation is None and not old.job_name:
            # Not started yet: the whole spec must be valid before anything runs.
            try:
                tuningjob = validate(body, self.settings, source)
            except SpecError as e:
                refused = invalid_spec(e.render(), getattr(e, "reason", "InvalidSpec"))
                await self._observe_and_write(key, body, memory, refused, job_name=None)
                return None
        else:
            try:
                tuningjob = parse_tuningjob(body, source)
            except SpecError as e:
                await self._observe_and_write(
                    key, body, memory, invalid_spec(e.render()), job_name=old.job_name
                )
                return None

        if job is None and self.settings.validate_data:
            # The Validating step first: the GPU Job only once the data is known good.
            waiting = await self._validate(key, body, memory, tuningjob, validation)
            if waiting is not None:
                return waiting.after
        if job is None:
            lingering = self._lingering_pods(key)
            if lingering:
                # Pods of an earlier Job (deleted by hand, or a deleted TuningJob of the
                # same name in its grace period) still run and may still write to the
                # destination: a second trainer must not start beside them.
                await self._observe_and_write(
                    key,
                    body,
                    memory,
                    Observation(
                        "Pending",
                        "WaitingForOldPods",
                        f"waiting for pod(s) {', '.join(lingering)} of an earlier Job to end "
                        "before starting a new one",
                    ),
                    job_name=old.job_name,
                )
                return self.settings.resync_seconds
            started = await self._start(key, body, memory, tuningjob)
            if isinstance(started, _Retry):
                return started.after
            job = started
        else:
            job = await self._sync_suspend(tuningjob, job)

        pods = [p for p in self.views.pods(key) if _owned_by(p, job["metadata"].get("uid"))]
        observation = _count_restarts(
            memory, observe(tuningjob, job, pods), job["metadata"]["name"]
        )
        progress = self._progress(key, memory, observation)
        await self._observe_and_write(
            key, body, memory, observation, job_name=job["metadata"]["name"], progress=progress
        )
        if memory.status.terminal:
            return None
        if memory.status.phase == "Running":
            return self.settings.progress_interval_seconds
        return self.settings.resync_seconds

    # --- the Job --------------------------------------------------------------------

    def _owned_job(self, key: Key, uid: str, *, validation: bool = False) -> Body | None:
        """The GPU Job, or (validation=True) the Validating step's Job."""
        return next(
            (
                j
                for j in self.views.jobs(key)
                if _owned_by(j, uid) and is_validate_job(j) == validation
            ),
            None,
        )

    async def _validate(
        self,
        key: Key,
        body: Body,
        memory: _Memory,
        tuningjob: TuningJob,
        validation: Body | None,
    ) -> _Retry | None:
        """Run the Validating step: None once it succeeded, else when to look again."""
        if validation is None:
            started = await self._start(key, body, memory, tuningjob, validate=True)
            if isinstance(started, _Retry):
                return started
            validation = started
        else:
            validation = await self._sync_suspend(tuningjob, validation, queued=False)
        uid = validation["metadata"].get("uid")
        pods = [p for p in self.views.pods(key) if _owned_by(p, uid)]
        observation = validating(observe(tuningjob, validation, pods))
        if observation.phase == "Succeeded":
            return None
        await self._observe_and_write(
            key, body, memory, observation, job_name=memory.status.job_name
        )
        if memory.status.terminal:
            return _Retry(None)
        return _Retry(self.settings.progress_interval_seconds)

    def _lingering_pods(self, key: Key) -> list[str]:
        """Pods with this TuningJob's label that have not ended (terminating ones included)."""
        return sorted(
            p["metadata"]["name"]
            for p in self.views.pods(key)
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        )

    def _adopt_foreign_status(self, key: Key, body: Body, memory: _Memory) -> None:
        """Take the stored status as the base when someone else wrote it.

        The memory is trusted over the index only while the index may lag behind our
        own write; a status written by anyone else (a person, another tool, a replica
        that lost the Lease, an etcd restored from a backup) is taken as what is stored,
        so that the next write corrects it rather than patching against what we
        believed.
        """
        version = body["metadata"].get("resourceVersion")
        if version is None or version in memory.written_over:
            return
        stored = TuningJobStatus.model_validate(body.get("status") or {})
        if stored != memory.status:
            log.info("%s: the stored status is not the one this replica wrote; correcting it", key)
            memory.status = stored
            memory.written_over = (None, None)

    async def _start(
        self,
        key: Key,
        body: Body,
        memory: _Memory,
        tuningjob: TuningJob,
        *,
        validate: bool = False,
    ) -> Body | _Retry:
        """Lock the spec (status.jobName), then create the Job (the GPU Job, or the
        Validating step's with validate=True). Returns the Job, or when to retry."""
        metadata = body["metadata"]
        namespace, generation = metadata["namespace"], int(metadata.get("generation") or 1)
        make = build_validate_job if validate else build_job
        job = make(tuningjob, self.settings, owner_uid=metadata["uid"], generation=generation)
        # status.jobName is always the GPU Job's: the spec is locked from the first Job on.
        name = child_name(tuningjob.metadata.name)
        if memory.status.job_name != name:
            # The CRD's CEL rule forbids spec changes once status.jobName is set. Setting it
            # against the resourceVersion we validated means the Job runs the stored spec.
            # The same write is the status as it will be once the Job exists, so creating
            # the Job needs no second status write.
            locked = next_status(
                memory.status,
                _WAITING_FOR_VALIDATION if validate else _WAITING_FOR_POD,
                generation=generation,
                job_name=name,
                progress=None,
                now=rfc3339(self.clock()),
            )
            try:
                await self._write(
                    key, body, memory, locked, resource_version=metadata.get("resourceVersion")
                )
            except Conflict:
                log.debug("%s changed since it was read; looking again", key)
                return _Retry(STALE_RETRY)
        name = job["metadata"]["name"]
        try:
            created = await self.api.create_job(job)
            memory.job_created_at, memory.created_name = self.clock(), name
            if not validate:
                self.metrics.start_latency_seconds.observe(
                    max(0.0, self.clock() - _timestamp(metadata.get("creationTimestamp")))
                )
            log.info("created Job %s/%s", namespace, name)
            return created
        except Conflict:
            existing = await self.api.get_job(namespace, name)
            if existing is not None and _owned_by(existing, metadata["uid"]):
                return existing  # made by us before a restart, or the index lags: adopt it
            message = (
                f"a Job named {name!r} already exists in namespace {namespace!r} and does not belong to this "
                "TuningJob; delete that Job or create the TuningJob under another name"
            )
            await self._observe_and_write(
                key, body, memory, Observation("Pending", "JobConflict", message), job_name=name
            )
            return _Retry(self.settings.resync_seconds)
        except (Invalid, BadRequest) as e:
            # The API server rejected the pod spec (e.g. a malformed affinity): the spec must change.
            await self._observe_and_write(
                key,
                body,
                memory,
                invalid_spec(f"the Job was rejected by the API server: {e.message}"),
                job_name=None,
            )
            return _Retry(None)
        except Forbidden as e:
            # A ResourceQuota or an admission policy: it may pass later.
            return await self._create_refused(key, body, memory, name, "JobForbidden", e.message)
        except ApiError as e:
            # 429, 5xx, a webhook that times out: the API server may accept it later.
            return await self._create_refused(key, body, memory, name, "JobCreateFailed", str(e))

    async def _create_refused(
        self, key: Key, body: Body, memory: _Memory, name: str, reason: str, message: str
    ) -> _Retry:
        """Say in the status why the Job is not there yet, and look again later."""
        await self._observe_and_write(
            key,
            body,
            memory,
            Observation("Pending", reason, f"creating the Job was refused: {message}"),
            job_name=name,
        )
        return _Retry(self.settings.resync_seconds)

    async def _sync_suspend(self, tuningjob: TuningJob, job: Body, *, queued: bool = True) -> Body:
        """spec.suspend drives the Job's suspend flag; with a queue, Kueue decides un-suspending
        (queued=False: the Validating step's Job, which no queue holds)."""
        current = bool((job.get("spec") or {}).get("suspend"))
        wanted: bool | None = True if tuningjob.spec.suspend else None
        if not tuningjob.spec.suspend and not (queued and tuningjob.spec.scheduling.queue_name):
            wanted = False
        if wanted is None or wanted == current:
            return job
        log.info(
            "%s Job %s/%s",
            "suspending" if wanted else "resuming",
            job["metadata"]["namespace"],
            job["metadata"]["name"],
        )
        return await self.api.patch_job(
            job["metadata"]["namespace"], job["metadata"]["name"], {"spec": {"suspend": wanted}}
        )

    # --- progress -------------------------------------------------------------------

    def _progress(self, key: Key, memory: _Memory, observation: Observation) -> Progress | None:
        """Progress from the latest metrics of the running pod; a read is started when due.

        Reading happens in the background (at most max_scrapes at once) and wakes the
        TuningJob when done, so a slow or unreachable trainer never holds a worker.
        """
        pod = observation.running_pod
        if pod is None or self.http is None:
            return None
        pod_uid = pod["metadata"].get("uid") or pod["metadata"]["name"]
        ip = (pod.get("status") or {}).get("podIP")
        now = self.clock()
        if (
            ip
            and not memory.scraping
            and now - memory.last_scrape >= self.settings.progress_interval_seconds * 0.9
        ):
            memory.scraping, memory.last_scrape = True, now
            host = f"[{ip}]" if ":" in ip else ip
            self._in_background(
                self._scrape(key, memory, pod_uid, f"http://{host}:{METRICS_PORT}/metrics")
            )
        if memory.samples is None or memory.samples[0] != pod_uid:
            return None
        _, first, latest = memory.samples
        return progress_from(latest, first if first is not latest else None, rfc3339(latest.at))

    async def _scrape(self, key: Key, memory: _Memory, pod_uid: str, url: str) -> None:
        try:
            async with self._scrapes:
                sample = await scrape(
                    self.http, url, self.settings.progress_timeout_seconds, self.clock()
                )
        finally:
            memory.scraping = False
        if sample is None or sample.step is None or not (sample.step or sample.total_steps):
            return  # unreadable, or still loading: nothing to show, so nothing to write
        if memory.samples is None or memory.samples[0] != pod_uid:
            memory.samples = (pod_uid, sample, sample)
        else:
            memory.samples = (pod_uid, memory.samples[1], sample)
        self.wake(key)

    # --- status ---------------------------------------------------------------------

    async def _observe_and_write(
        self,
        key: Key,
        body: Body,
        memory: _Memory,
        observation: Observation,
        *,
        job_name: str | None,
        progress: Progress | None = None,
    ) -> None:
        generation = int(body["metadata"].get("generation") or 1)
        new = next_status(
            memory.status,
            observation,
            generation=generation,
            job_name=job_name,
            progress=progress,
            now=rfc3339(self.clock()),
        )
        await self._write(key, body, memory, new)

    async def _write(
        self,
        key: Key,
        body: Body,
        memory: _Memory,
        new: TuningJobStatus,
        *,
        resource_version: str | None = None,
    ) -> None:
        old = memory.status
        patch = merge_patch(old.to_dict(), new.to_dict())
        if not patch:
            return
        metadata = body["metadata"]
        try:
            written = await self.api.patch_tuningjob_status(
                metadata["namespace"], metadata["name"], patch, resource_version=resource_version
            )
        except NotFound:
            self.forget(key)
            return
        memory.status = new
        memory.written_over = (
            metadata.get("resourceVersion"),
            ((written or {}).get("metadata") or {}).get("resourceVersion"),
        )
        if new.phase and (new.phase, new.reason) != (old.phase, old.reason):
            log.info(
                "%s/%s: %s (%s) %s",
                metadata["namespace"],
                metadata["name"],
                new.phase,
                new.reason,
                new.message or "",
            )
            self.metrics.transitions_total.labels(new.phase, new.reason or "").inc()
            # An Event per phase change, and per new reason that needs a person's attention
            # (not for every step of Pending: PodCreating, Scheduling, ContainerCreating).
            if new.phase != old.phase or (new.reason or "") in WARNING_REASONS:
                event = transition_event(
                    dict(body),
                    phase=new.phase,
                    reason=new.reason or new.phase,
                    message=new.message or "",
                    now=micro_time(self.clock()),
                    instance=self.identity,
                    unique=f"{time.time_ns():x}",
                )
                self._in_background(self._post_event(key, event))

    def _in_background(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _post_event(self, key: Key, event: dict[str, Any]) -> None:
        # Off the reconcile path: an Event is informative, and its loss must not block the status.
        try:
            async with self._event_posts:
                await self.api.create_event(event)
        except (ApiError, OSError) as e:
            log.warning("could not post an Event for %s: %s", key, e)


def _count_restarts(memory: _Memory, observation: Observation, job_name: str) -> Observation:
    """status.restarts never falls while the Job lives: failed pods vanish, restarts stay.

    A preempted pod (exit 75, or a DisruptionTarget) is ignored by the Job's
    podFailurePolicy, so the Job's `failed` count leaves it out, and the Job controller
    deletes it once its replacement exists: the observation of the moment would count 0
    again. Each failed pod seen is counted once on top of the stored count. A replica that
    takes over trusts the stored count for the failed pods it sees on its first look (the
    replica before it counted them); a pod that failed and vanished while no replica
    watched is not counted, so the figure is a lower bound.
    """
    seen = observation.failed_pods
    stored = (memory.status.restarts or 0) if memory.status.job_name == job_name else 0
    if memory.counted_failures is None or memory.counted_failures[0] != job_name:
        memory.counted_failures = (job_name, seen)
        restarts = max(observation.restarts, stored)
    else:
        new = seen - memory.counted_failures[1]
        memory.counted_failures = (job_name, memory.counted_failures[1] | seen)
        restarts = max(observation.restarts, stored + len(new))
    return replace(observation, restarts=restarts)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif before != value:
            patch[key] = value
    return patch


def _job_finished(job: Body) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _owned_by(body: Body, uid: str | None) -> bool:
    return uid is not None and any(
        ref.get("uid") == uid and ref.get("controller")
        for ref in (body.get("metadata") or {}).get("ownerReferences") or []
    )


def _timestamp(text: str | None) -> float:
    return parse_rfc3339(text) if text else time.time()
