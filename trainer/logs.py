"""Logs: one JSON object per line where no person watches (a pod), readable text on a terminal.

In a pod, stderr is not a terminal: every record becomes a JSON line with `time`,
`level`, `logger`, `message`, the data-parallel `rank`, and any structured fields passed
with `extra={"fields": {...}}` (step metrics, for example), ready for Loki or Cloud
Logging. On a terminal the usual text format is kept, and a progress bar shows the
steps (rank 0 only); it is never drawn into a log file.

Libraries that talk too much at INFO (transformers' weight-loading bars, httpx) are
turned down to WARNING.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, TextIO

from kubetune.api.timestamps import rfc3339

NOISY_LIBRARIES = (
    "transformers",
    "peft",
    "accelerate",
    "httpx",
    "urllib3",
    "botocore",
    "s3transfer",
    "huggingface_hub",
    "filelock",
)


class JsonFormatter(logging.Formatter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "time": rfc3339(record.created, digits=3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "rank": self.rank,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            body.update(fields)
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str, separators=(",", ":"))


def on_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def configure_logging(
    *, rank: int = 0, json_logs: bool | None = None, level: int | None = None
) -> bool:
    """Set up the root logger for a training process; returns whether logs are JSON."""
    json_logs = (not on_terminal()) if json_logs is None else json_logs
    root = logging.getLogger()
    if level is not None:
        root.setLevel(level)
    elif root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter(rank))
    else:
        prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
        )
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # transformers' own verbosity and its tqdm bars while loading weights.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    return json_logs


class _NoBar:
    """What terminal_progress gives where no bar is shown: updates go nowhere."""

    def update(self, n: float = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def terminal_progress(
    total: float, *, desc: str, unit: str = "it", unit_scale: bool = False, enabled: bool = True
) -> Any:
    """A tqdm bar for a long step (model download, data preparation, evaluation), shown
    only on a terminal and where `enabled` (rank 0): a pod's log gets log lines, not bars.
    Usable as a context manager; update(n) is safe from several threads."""
    if not (enabled and on_terminal()):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=unit_scale, dynamic_ncols=True, leave=False
    )


class ProgressBar:
    """A tqdm bar over optimizer steps, on a terminal only (and rank 0 only)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self._bar = None
        if enabled and on_terminal():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True
            )

    def update(self, loss: float, tokens_per_second: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(
                loss=f"{loss:.4f}", tok_s=f"{tokens_per_second:.0f}", refresh=False
            )
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
