"""`kubetune operator`: settings, leader election, probes, then kopf.

The process: load and check the settings (exit 78 on a bad one), serve /healthz and
/metrics, wait for the leader Lease (standby replicas stay here, healthy), then run
kopf with the handlers in kubetune.operator.handlers until SIGTERM, or until the Lease
is lost, in which case the process exits 1 so that Kubernetes restarts it as a standby.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any

import aiohttp
import kopf

from kubetune.api.contract import ExitCode
from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubetune.operator import handlers  # noqa: F401  (registers the kopf handlers)
from kubetune.operator.election import LeaseConfig, LeaseElector
from kubetune.operator.kubeapi import ApiError, Forbidden, KubeApi, NotFound
from kubetune.operator.metrics import HttpServers, OperatorMetrics
from kubetune.operator.runtime import Runtime, health_report
from kubetune.operator.settings import Settings, load_settings

log = logging.getLogger("kubetune.operator")

LOST_LEADERSHIP = 1


class ClusterNotReady(Exception):
    """The cluster lacks something the operator cannot work without (the CRD, access)."""


def run() -> None:
    settings = load_settings()
    configure_logging(settings)
    try:
        code = asyncio.run(serve(settings))
    except ClusterNotReady as e:
        log.error("%s", e)
        sys.exit(ExitCode.INVALID_CONFIG)
    if code:
        sys.exit(code)


def configure_logging(settings: Settings) -> None:
    if settings.log_format == "json":
        level = logging.getLogger().level
        logging.getLogger().handlers.clear()
        kopf.configure(log_format=kopf.LogFormat.JSON, verbose=level <= logging.DEBUG)
    # kopf's own per-object logs are verbose at INFO; keep its warnings (all of it with -v).
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kopf").setLevel(logging.WARNING)


def identity() -> str:
    """This replica's name in the Lease: the pod name in a cluster, host and pid elsewhere."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


async def serve(settings: Settings) -> int:
    """Run one replica until stopped; return the process exit code."""
    me = identity()
    api = await KubeApi.connect()
    try:
        await require_tuningjobs(api, settings)
    except BaseException:
        await api.close()
        raise
    state: dict[str, Any] = {"runtime": None, "leading": None}
    metrics = OperatorMetrics(
        phases=lambda: state["runtime"].reconciler.known_phases() if state["runtime"] else (),
        pending_since=lambda: (
            state["runtime"].reconciler.pending_since() if state["runtime"] else ()
        ),
    )
    servers = HttpServers(metrics, health=lambda: health_report(state["runtime"], state["leading"]))
    await servers.start(settings.metrics_port, settings.health_port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    elector: LeaseElector | None = None
    code = 0
    try:
        if settings.leader_election:
            elector = LeaseElector(
                api,
                LeaseConfig(
                    namespace=settings.resolved_lease_namespace(),
                    name=settings.lease_name,
                    identity=me,
                    duration=settings.lease_duration_seconds,
                    renew_deadline=settings.lease_renew_deadline_seconds,
                    retry=settings.lease_retry_seconds,
                ),
            )
            state["leading"] = False
            if not await _until_stopped(elector.acquire(), stop):
                return 0
            state["leading"] = True

        def started(runtime: Runtime) -> None:
            state["runtime"] = runtime

        operator = asyncio.create_task(
            kopf.operator(
                standalone=True,  # one replica acts at a time through the Lease, not kopf peering
                clusterwide=settings.clusterwide,
                namespaces=settings.namespaces,
                stop_flag=stop,
                memo=kopf.Memo(
                    settings=settings, api=api, metrics=metrics, identity=me, on_started=started
                ),
            ),
            name="kopf",
        )
        watchers = [operator]
        if elector is not None:
            holding = asyncio.create_task(elector.hold(), name="lease renewal")
            watchers.append(holding)
        done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        if elector is not None and holding in done:
            code = (
                LOST_LEADERSHIP  # stop kopf; exit non-zero so Kubernetes restarts us as a standby
            )
        stop.set()
        await operator
        if elector is not None:
            holding.cancel()
    finally:
        if elector is not None and code != LOST_LEADERSHIP:
            await elector.release()
        state["runtime"] = None
        await servers.stop()
        await api.close()
    return code


async def require_tuningjobs(api: KubeApi, settings: Settings) -> None:
    """Fail at start, in words, when TuningJobs cannot be read where the operator watches.

    kopf's cluster scanning is off (it would need cluster-wide access to CRDs), so kopf
    would not notice a missing CRD: it would retry its watches forever and handle
    nothing. One list per watched namespace, which the operator's RBAC grants anyway,
    says whether the resource is served (a 404 means no CRD) and readable.
    """
    crd = f"{PLURAL}.{GROUP}"
    watched: list[str | None] = [*settings.namespaces] or [None]  # None: every namespace
    for namespace in watched:
        where = f"namespace {namespace!r}" if namespace else "the cluster"
        try:
            await api.list_tuningjobs(namespace)
        except NotFound:
            raise ClusterNotReady(
                f"the CustomResourceDefinition {crd} (version {VERSION}) is not installed in {api.server}: "
                "kubectl apply --server-side -f crds/ or install the Helm chart with crds.install=true"
            ) from None
        except Forbidden as e:
            raise ClusterNotReady(
                f"the operator may not list {PLURAL} in {where}: {e.message}. Grant it the Helm chart's "
                "RBAC (charts/kubetune/templates/rbac.yaml; the chart does, for every namespace in "
                "watchNamespaces, and `helm template` prints the rules)"
            ) from None
        except ApiError as e:
            raise ClusterNotReady(
                f"the API server refused to list {PLURAL} in {where}: {e}"
            ) from None
        except (aiohttp.ClientError, OSError) as e:
            raise ClusterNotReady(
                f"cannot reach the Kubernetes API server at {api.server}: {e}"
            ) from None


async def _until_stopped(work: Any, stop: asyncio.Event) -> bool:
    """Await `work` unless `stop` is set first; True if the work finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stopper):
        if pending not in done:
            pending.cancel()
    return task in done
