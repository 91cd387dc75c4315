"""Times as Kubernetes writes them (RFC 3339, UTC, `Z`), and back.

`Time` fields (status times, conditions' lastTransitionTime, progress.updateTime)
carry whole seconds; `MicroTime` fields (a Lease's acquire and renew times, Events)
carry microseconds; log lines carry milliseconds.
"""

from __future__ import annotations

import datetime
from typing import Literal

_FORMAT = "%Y-%m-%dT%H:%M:%S"


def rfc3339(epoch: float, *, digits: Literal[0, 3, 6] = 0) -> str:
    """Seconds since the epoch → '2026-01-01T01:00:00Z' (`digits` of the fraction kept)."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    if not digits:
        return moment.strftime(_FORMAT + "Z")
    return moment.strftime(_FORMAT + ".%f")[: digits - 6 or None] + "Z"


def micro_time(epoch: float) -> str:
    """A MicroTime: '2026-01-01T01:00:00.123456Z'."""
    return rfc3339(epoch, digits=6)


def parse_rfc3339(text: str) -> float:
    """'2026-01-01T01:00:00Z' (any fraction, `Z` or an offset) → seconds since the epoch."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
