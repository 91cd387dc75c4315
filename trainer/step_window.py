"""Steps since the last log line, averaged into one metrics.jsonl record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.trainer.loop import StepReport, TrainLoop


class StepWindow:
    """Steps since the last log line: averaged into one metrics.jsonl record."""

    def __init__(self) -> None:
        self.steps: list[StepReport] = []
        self.last_rate = 0.0

    def add(self, step: StepReport) -> None:
        self.steps.append(step)
        self.last_rate = step.input_tokens / step.seconds if step.seconds > 0 else 0.0

    def flush(self, loop: TrainLoop) -> dict[str, Any]:
        steps, self.steps = self.steps, []
        trained = sum(s.trained_tokens for s in steps)
        seconds = sum(s.seconds for s in steps)
        last = steps[-1]
        return {
            "kind": "train",
            "step": last.step,
            "epoch": round(loop.epochs_done(), 4),
            # Token-weighted over the window, like the per-step loss itself.
            "loss": sum(s.loss * s.trained_tokens for s in steps) / max(trained, 1),
            # Share of the window's trained tokens predicted exactly (argmax).
            "token_accuracy": sum(s.correct_tokens for s in steps) / max(trained, 1),
            "learning_rate": last.learning_rate,
            "grad_norm": last.grad_norm,
            "tokens_per_second": sum(s.input_tokens for s in steps) / seconds
            if seconds > 0
            else 0.0,
            "tokens_total": loop.progress.tokens_total,
            "step_seconds": seconds / len(steps),
        }


def read_records(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
