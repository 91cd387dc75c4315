"""Training progress from the trainer's Prometheus endpoint.

`parse_metrics` turns the exposition text into a `MetricsSample` (pure);
`progress_from` turns samples into the status' `progress` (pure); `scrape` is the one
network call, and returns None rather than raising when the trainer is not serving
(still starting, between phases, or a pod on a node the operator cannot reach).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.status import Progress
from kubetune.api.trainer_metrics import PREFIX, TrainerMetric

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricsSample:
    """What one read of the trainer's metrics said, and when (seconds, any epoch)."""

    at: float
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    phase: str | None = None  # the trainer's own phase: the label of kubetune_trainer_phase == 1


def parse_metrics(text: str, at: float) -> MetricsSample:
    values: dict[str, float] = {}
    phase = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(PREFIX):
                continue
            if sample.name == TrainerMetric.PHASE:
                if sample.value == 1 and "phase" in sample.labels:
                    phase = sample.labels["phase"]
            elif not sample.labels and math.isfinite(sample.value):
                values[sample.name] = sample.value

    def integer(name: str) -> int | None:
        value = values.get(name)
        return int(value) if value is not None and value >= 0 else None

    return MetricsSample(
        at=at,
        step=integer(TrainerMetric.STEP),
        total_steps=integer(TrainerMetric.TOTAL_STEPS) or None,
        epoch=values.get(TrainerMetric.EPOCH),
        loss=values.get(TrainerMetric.LOSS),
        eval_loss=values.get(TrainerMetric.EVAL_LOSS),
        tokens_per_second=values.get(TrainerMetric.TOKENS_PER_SECOND),
        phase=phase,
    )


def progress_from(latest: MetricsSample, first: MetricsSample | None, update_time: str) -> Progress:
    """status.progress from the latest sample; `first` (same pod) paces the ETA.

    The trainer's gauges read 0 until their first value (docs/trainer.md): while it
    loads, before totalSteps is known, there is no step to show, and before the first
    optimizer step there is no loss, validation loss or throughput to show (a 0 there is
    "not measured", never a measurement, so it is left out rather than reported).
    """
    total = latest.total_steps
    step = latest.step if total or latest.step else None
    percent = summary = eta = None
    if step is not None and total:
        percent = max(0, min(100, int(100 * step / total)))
        summary = f"{step}/{total} ({percent}%)"
    if first is not None and step is not None and total and first.step is not None:
        elapsed, done = latest.at - first.at, step - first.step
        if elapsed > 0 and done > 0:
            eta = format_duration((total - step) * elapsed / done)
    stepped = bool(step)

    def measured(value: float | None) -> float | None:
        return value if stepped and value else None

    tokens_per_second = measured(latest.tokens_per_second)
    return Progress(
        step=step,
        total_steps=total,
        epoch=decimal_string(latest.epoch, 2) if step is not None else None,
        loss=decimal_string(measured(latest.loss), 4),
        eval_loss=decimal_string(measured(latest.eval_loss), 4),
        tokens_per_second=int(tokens_per_second) if tokens_per_second is not None else None,
        percent=percent,
        summary=summary,
        eta=eta,
        update_time=update_time,
    )


def format_duration(seconds: float) -> str:
    """Like Go's time.Duration, rounded to the second: 1h2m3s, 4m0s, 12s."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def decimal_string(value: float | None, significant: int) -> str | None:
    if value is None:
        return None
    return (
        f"{value:.{significant}g}"
        if abs(value) < 1
        else f"{value:.{significant}f}".rstrip("0").rstrip(".")
    )


async def scrape(session: object, url: str, timeout: float, at: float) -> MetricsSample | None:
    """Read the trainer's metrics; None when they cannot be read (logged at debug level)."""
    import aiohttp

    assert isinstance(session, aiohttp.ClientSession)
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                log.debug("metrics at %s: HTTP %s", url, response.status)
                return None
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        log.debug("metrics at %s not readable: %s", url, e)
        return None
    try:
        return parse_metrics(text, at)
    except ValueError as e:
        log.debug("metrics at %s not parseable: %s", url, e)
        return None
