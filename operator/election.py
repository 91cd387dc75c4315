"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does.

Several replicas of the operator may run (a Deployment with replicas: 2 for fast
fail-over); only the one holding the Lease runs kopf and the reconcilers, so two
replicas never act on the same TuningJob. Why a Lease rather than kopf's peering:
peering pauses *all* operators that share a priority (replicas of one Deployment do),
needs its own CRDs and object, and does not pause work the operator schedules itself;
a Lease is the Kubernetes convention (`kubectl get lease kubetune-operator` names the
leader) and gates everything at once.

Timing follows client-go: a candidate takes the Lease over when its holder has not
renewed it for leaseDurationSeconds, measured on the candidate's own clock from when it
last saw the Lease change (so clock skew between nodes does not matter). The leader
renews every retry period; if it cannot renew within the renew deadline it steps down,
and the operator exits so that Kubernetes restarts it as a candidate. A clean shutdown
releases the Lease so that a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from kubetune.api.timestamps import micro_time
from kubetune.operator.kubeapi import ApiError, Conflict, KubeApi

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    duration: float
    renew_deadline: float
    retry: float


class LeaseElector:
    def __init__(self, api: KubeApi, config: LeaseConfig):
        self.api = api
        self.config = config
        self.leading = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._lease: dict[str, Any] | None = None

    async def acquire(self) -> None:
        """Return once this replica holds the Lease."""
        log.info(
            "waiting to lead: Lease %s/%s as %s",
            self.config.namespace,
            self.config.name,
            self.config.identity,
        )
        while not await self._try_acquire_or_renew():
            await asyncio.sleep(self.config.retry * random.uniform(1.0, 1.2))
        self.leading = True
        log.info("leading: Lease %s/%s is ours", self.config.namespace, self.config.name)

    async def hold(self) -> None:
        """Renew the Lease until renewing fails for longer than the renew deadline; then return."""
        while True:
            deadline = time.monotonic() + self.config.renew_deadline
            while True:
                if await self._try_acquire_or_renew():
                    break
                if time.monotonic() >= deadline:
                    self.leading = False
                    log.error(
                        "lost the Lease %s/%s: could not renew it in %ss",
                        self.config.namespace,
                        self.config.name,
                        self.config.renew_deadline,
                    )
                    return
                await asyncio.sleep(self.config.retry)
            await asyncio.sleep(self.config.retry)

    async def release(self) -> None:
        """Give the Lease up on a clean exit so that a standby can take over at once."""
        if not self.leading or self._lease is None:
            return
        lease = {
            **self._lease,
            "spec": {
                **self._lease["spec"],
                "holderIdentity": None,
                "leaseDurationSeconds": 1,
                "renewTime": _now(),
            },
        }
        try:
            await self.api.replace_lease(lease)
            log.info("released the Lease %s/%s", self.config.namespace, self.config.name)
        except ApiError as e:
            log.warning("could not release the Lease: %s", e)
        self.leading = False

    async def _try_acquire_or_renew(self) -> bool:
        config = self.config
        try:
            lease = await self.api.get_lease(config.namespace, config.name)
            now = _now()
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": config.name, "namespace": config.namespace},
                    "spec": self._spec(acquired=now, renewed=now, transitions=0),
                }
                self._lease = await self.api.create_lease(body)
                return True
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity")
            record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
            if record != self._observed:
                self._observed, self._observed_at = record, time.monotonic()
            duration = float(spec.get("leaseDurationSeconds") or config.duration)
            if (
                holder
                and holder != config.identity
                and time.monotonic() < self._observed_at + duration
            ):
                return False  # held by a live leader
            ours = holder == config.identity
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
            acquired: str = (spec.get("acquireTime") if ours else None) or now
            updated = {
                **lease,
                "spec": self._spec(acquired=acquired, renewed=now, transitions=transitions),
            }
            self._lease = await self.api.replace_lease(
                updated
            )  # resourceVersion: a race is a Conflict
            if not ours:
                log.info("took the Lease over from %s", holder or "nobody")
            return True
        except Conflict:
            return False
        except (TimeoutError, ApiError, OSError, aiohttp.ClientError) as e:
            log.warning("Lease %s/%s: %s", config.namespace, config.name, e)
            return False

    def _spec(self, *, acquired: str, renewed: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": max(1, round(self.config.duration)),
            "acquireTime": acquired,
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }


def _now() -> str:
    """A MicroTime, as Lease fields want it."""
    return micro_time(time.time())
