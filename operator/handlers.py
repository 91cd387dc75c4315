"""kopf handlers: they only translate kopf's events into calls on the Runtime.

Watched: TuningJobs; Jobs and Pods that carry the kubetune.dev/tuningjob label (a
server-side label selector, so the operator never lists a cluster's other pods).
Each is kept in a kopf index, trimmed to the fields the status needs; any change
wakes the owning TuningJob's reconcile. There are no create/update/delete handlers
and no timers, so kopf writes nothing to the objects: no finalizers (a TuningJob can
be deleted while the operator is down; its Job and pods go by garbage collection) and
no handler state in the status.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubetune.operator import cache
from kubetune.operator.builders import TUNINGJOB_LABEL, child_name
from kubetune.operator.kubeapi import KubeApi
from kubetune.operator.metrics import OperatorMetrics
from kubetune.operator.reconciler import Views
from kubetune.operator.runtime import Runtime
from kubetune.operator.settings import load_settings

log = logging.getLogger(__name__)

CHILDREN = {TUNINGJOB_LABEL: kopf.PRESENT}

# KOPF_CALLBACKS: kopf calls handlers with keyword arguments and types each kind of
# callback as a Protocol that names all of them, `namespace: str | None` included. These
# handlers take the few they use (namespace is never None for these namespaced
# resources; the startup handler receives the indices by their names) and `**_` for
# the rest, which kopf supports but its Protocols cannot express: hence the ignores.


@kopf.index(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]  # see KOPF_CALLBACKS
def tuningjob_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, child_name(name)): cache.tuningjob(body)}


@kopf.index("batch", "v1", "jobs", labels=CHILDREN)  # type: ignore[arg-type]  # see KOPF_CALLBACKS
def job_index(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, labels[TUNINGJOB_LABEL]): cache.job(body)}


@kopf.index("", "v1", "pods", labels=CHILDREN)  # type: ignore[arg-type]  # see KOPF_CALLBACKS
def pod_index(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict:
    return {(namespace, labels[TUNINGJOB_LABEL]): cache.pod(body)}


@kopf.on.event(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]  # see KOPF_CALLBACKS
async def tuningjob_changed(
    namespace: str, name: str, status: kopf.Status, memo: kopf.Memo, **_: Any
) -> None:
    # Not started yet (no Job): served first, so a burst of new TuningJobs starts quickly.
    memo.runtime.wake((namespace, child_name(name)), urgent=not status.get("jobName"))


@kopf.on.event("batch", "v1", "jobs", labels=CHILDREN)
@kopf.on.event("", "v1", "pods", labels=CHILDREN)  # type: ignore[arg-type]  # see KOPF_CALLBACKS
async def child_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    # A pod passes through several states within moments (created, scheduled, started):
    # one status write for them all, rather than one per state.
    memo.runtime.wake_soon((namespace, labels[TUNINGJOB_LABEL]))


@kopf.on.startup()  # type: ignore[arg-type]  # see KOPF_CALLBACKS
async def startup(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    tuningjob_index: kopf.Index,
    job_index: kopf.Index,
    pod_index: kopf.Index,
    **_: Any,
) -> None:
    # `kubetune operator` passes its settings, API client and metrics in the memo; under
    # `kopf run -m kubetune.operator.handlers` (development) they are made here.
    config = memo.get("settings") or load_settings()
    api = memo.get("api") or await KubeApi.connect()
    memo.setdefault("owns_api", "api" not in memo)
    metrics = memo.get("metrics") or OperatorMetrics()

    # Handler state (if a persistent handler is ever added) goes to annotations, never
    # into the public status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kubetune.dev")
    settings.posting.reporting_component = "kubetune-operator"
    # The resources and namespaces are known (the CRD ships with the operator, the
    # namespaces are settings), so kopf need not observe CRDs and namespaces: that would
    # take cluster-wide list/watch permissions the operator has no other use for, and
    # without them kopf retries for about a minute before it starts watching.
    settings.scanning.disabled = True
    # Children only: the API server filters, so other pods never reach the operator.
    settings.watching.label_selectors["batch", "v1", "jobs"] = TUNINGJOB_LABEL
    settings.watching.label_selectors["", "v1", "pods"] = TUNINGJOB_LABEL
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330

    views = Views(
        tuningjob=lambda key: next(iter(tuningjob_index.get(key, ())), None),
        jobs=lambda key: list(job_index.get(key, ())),
        pods=lambda key: list(pod_index.get(key, ())),
    )
    runtime = Runtime(
        config, api, metrics, views, identity=memo.get("identity") or "kubetune-operator"
    )
    memo.runtime = runtime
    memo.api = api
    runtime.start()
    on_started = memo.get("on_started")
    if on_started is not None:
        on_started(runtime)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime = memo.get("runtime")
    if runtime is not None:
        await runtime.stop()
    if memo.get("owns_api"):
        await memo.api.close()
