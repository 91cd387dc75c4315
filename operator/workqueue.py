"""A work queue of TuningJob keys, with client-go's workqueue guarantees.

Every change the operator hears about (a TuningJob, its Job or its pods) adds the
TuningJob's key; workers take keys and reconcile. A key is queued at most once however
many events arrive, and never reconciled by two workers at once: a key added while
it is being reconciled is queued again when that ends. `add_after` schedules a later
visit (progress reads, periodic resync, retries with back-off).

Urgent keys (TuningJobs that have no Job yet) are served before the others: under a
burst of new TuningJobs, starting them comes before refreshing the status of the ones
already started, which keeps "created → Job created" short.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable


class WorkQueue:
    def __init__(self) -> None:
        self._urgent: deque[Hashable] = deque()
        self._normal: deque[Hashable] = deque()
        self._ready = asyncio.Event()
        self._queued: set[Hashable] = set()
        self._queued_urgent: set[Hashable] = set()
        self._active: set[Hashable] = set()
        self._dirty: dict[Hashable, bool] = {}  # key → urgent
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: Hashable, urgent: bool = False) -> None:
        if key in self._active:
            self._dirty[key] = self._dirty.get(key, False) or urgent
            return
        if key in self._queued:
            if urgent and key not in self._queued_urgent:
                # Promote: the entry left in the normal lane is skipped when reached.
                self._queued_urgent.add(key)
                self._urgent.append(key)
                self._ready.set()
            return
        self._queued.add(key)
        if urgent:
            self._queued_urgent.add(key)
            self._urgent.append(key)
        else:
            self._normal.append(key)
        self._ready.set()

    def add_after(self, key: Hashable, delay: float) -> None:
        """Add `key` in `delay` seconds, unless an earlier visit is already scheduled."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None and not timer.cancelled() and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def forget(self, key: Hashable) -> None:
        """Drop scheduled visits of a key that is gone."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> Hashable:
        while True:
            while self._urgent:
                key = self._urgent.popleft()
                if key in self._queued_urgent:
                    return self._take(key)
            while self._normal:
                key = self._normal.popleft()
                if key in self._queued and key not in self._queued_urgent:
                    return self._take(key)
            self._ready.clear()
            await self._ready.wait()

    def _take(self, key: Hashable) -> Hashable:
        self._queued.discard(key)
        self._queued_urgent.discard(key)
        self._active.add(key)
        return key

    def done(self, key: Hashable) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self.add(key, urgent=self._dirty.pop(key))

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
