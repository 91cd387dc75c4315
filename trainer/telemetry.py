"""What the trainer tells the world while it runs: Prometheus metrics and metrics.jsonl.

The operator reads progress from the Prometheus endpoint; the metric names and the
phases are part of that contract and live, with their table, in `kubetune.api.trainer_metrics`.
Only rank 0 serves and records: it sees global figures (token counts and losses are
summed over ranks before they get here).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from kubetune.api.trainer_metrics import TRAINER_PHASES, TrainerMetric, TrainerPhase

log = logging.getLogger(__name__)


class Telemetry:
    """Prometheus gauges and counters, the metrics.jsonl file, the current phase.

    `enabled=False` (ranks other than 0) keeps the same interface and records nothing.
    """

    def __init__(self, metrics_file: Path | None, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.metrics_file = metrics_file
        self.registry = CollectorRegistry(auto_describe=True)
        self.port: int | None = None
        self.phase: TrainerPhase | None = None
        self._server: Any = None
        self._lock = threading.Lock()
        r = self.registry
        self._phase = Gauge(
            TrainerMetric.PHASE,
            "1 for the trainer's current phase, 0 for the others",
            ["phase"],
            registry=r,
        )
        self.step = Gauge(TrainerMetric.STEP, "Optimizer steps done", registry=r)
        self.total_steps = Gauge(TrainerMetric.TOTAL_STEPS, "Optimizer steps planned", registry=r)
        self.epoch = Gauge(TrainerMetric.EPOCH, "Epochs done (fractional)", registry=r)
        self.loss = Gauge(
            TrainerMetric.LOSS, "Training loss of the last step, per trained token", registry=r
        )
        self.eval_loss = Gauge(
            TrainerMetric.EVAL_LOSS,
            "Validation loss of the last evaluation, per trained token",
            registry=r,
        )
        self.learning_rate = Gauge(
            TrainerMetric.LEARNING_RATE, "Learning rate of the last step", registry=r
        )
        self.grad_norm = Gauge(
            TrainerMetric.GRAD_NORM,
            "Gradient L2 norm of the last step, before clipping",
            registry=r,
        )
        self.tokens = Counter(
            TrainerMetric.TOKENS, "Input tokens trained on (all ranks) by this process", registry=r
        )
        self.tokens_per_second = Gauge(
            TrainerMetric.TOKENS_PER_SECOND,
            "Input tokens per second over the last log window",
            registry=r,
        )
        self.gpu_memory = Gauge(
            TrainerMetric.GPU_MEMORY_BYTES, "GPU memory of rank 0's device", ["kind"], registry=r
        )
        self.packing_efficiency = Gauge(
            TrainerMetric.PACKING_EFFICIENCY,
            "Share of sequence slots holding real tokens",
            registry=r,
        )
        self.s3_bytes = Counter(
            TrainerMetric.S3_BYTES, "Bytes moved to and from S3", ["direction"], registry=r
        )
        for phase in TRAINER_PHASES:
            self._phase.labels(phase=phase).set(0)
        for direction in ("upload", "download"):
            self.s3_bytes.labels(direction=direction)

    # -- the endpoint ----------------------------------------------------------------

    def serve(self, port: int) -> int | None:
        """Serve /metrics on `port` (0: any free port); returns the port, None when it could not."""
        if not self.enabled:
            return None
        try:
            self._server, _ = start_http_server(port, addr="0.0.0.0", registry=self.registry)
        except OSError as e:
            log.warning(
                "cannot serve metrics on port %d (%s); training continues without the endpoint",
                port,
                e,
            )
            return None
        self.port = self._server.server_port
        log.info("serving Prometheus metrics on port %d", self.port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- updates ----------------------------------------------------------------------

    def set_phase(self, phase: TrainerPhase) -> None:
        if self.phase == phase:
            return
        if self.phase is not None:
            self._phase.labels(phase=self.phase).set(0)
        self._phase.labels(phase=phase).set(1)
        self.phase = phase
        log.debug("phase: %s", phase)

    def add_s3_bytes(self, direction: Literal["upload", "download"], amount: int) -> None:
        """A storage.ByteCallback (called from transfer threads; prometheus_client is thread-safe)."""
        self.s3_bytes.labels(direction=direction).inc(amount)

    def record_gpu_memory(self) -> None:
        import torch

        if not torch.cuda.is_available():
            return
        self.gpu_memory.labels(kind="allocated").set(torch.cuda.memory_allocated())
        self.gpu_memory.labels(kind="reserved").set(torch.cuda.memory_reserved())
        self.gpu_memory.labels(kind="peak").set(torch.cuda.max_memory_allocated())

    def write_record(self, record: dict[str, Any]) -> None:
        """Append one JSON object to metrics.jsonl (rank 0 only)."""
        if not self.enabled or self.metrics_file is None:
            return
        line = json.dumps({"time": round(time.time(), 3), **record}, separators=(",", ":"))
        with self._lock, self.metrics_file.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def truncate_records_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run repeats those steps and logs them again."""
        if self.metrics_file is None or not self.metrics_file.exists():
            return
        kept = [
            line
            for line in self.metrics_file.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.metrics_file.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
