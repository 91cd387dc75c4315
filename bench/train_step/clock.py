"""The instrumentation inside each worker of the train-step benchmark, the same for every
contender and touching none: optimizer-step timestamps and the memory peak (StepClock),
real and padded tokens of each batch a Trainer's collator makes (CountingCollator)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


class StepClock:
    """Timestamps every optimizer step of any optimizer; memory peak over the timed steps."""

    def __init__(self, warmup: int, steps: int, cuda: bool) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.warmup, self.steps, self.cuda = warmup, steps, cuda
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # this process's CPU seconds, every thread
        self.peak_bytes: int | None = None
        self.rss_at_warmup: int | None = None
        self.padding_share: float | None = None  # where the runner can tell
        self.handle = register_optimizer_step_post_hook(self._on_step)

    def _on_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())
        done = len(self.times)
        if done == self.warmup:
            self.rss_at_warmup = _status_kib("VmRSS") * 1024
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            else:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        elif done == self.warmup + self.steps:
            if self.cuda:
                self.peak_bytes = torch.cuda.max_memory_allocated()
            else:
                self.peak_bytes = _status_kib("VmHWM") * 1024

    def result(self, step_tokens: list[int]) -> dict[str, Any]:
        w, n = self.warmup, self.steps
        if len(self.times) < w + n or len(step_tokens) < w + n:
            raise RuntimeError(
                f"expected {w + n} optimizer steps with token counts, saw {len(self.times)} steps "
                f"and {len(step_tokens)} counts"
            )
        seconds = self.times[w + n - 1] - self.times[w - 1]
        cpu_seconds = self.cpu_times[w + n - 1] - self.cpu_times[w - 1]
        tokens = sum(step_tokens[w : w + n])
        return {
            "seconds": seconds,
            "cpuSeconds": cpu_seconds,
            "tokens": tokens,
            "tokensPerSecond": tokens / seconds,
            # Steadier than wall-clock time where other work shares the cores (CPU runs only).
            "tokensPerCpuSecond": tokens / cpu_seconds if cpu_seconds > 0 else None,
            "stepSeconds": [
                round(b - a, 4) for a, b in zip(self.times[w - 1 :], self.times[w:], strict=False)
            ],
            "peakMemoryBytes": self.peak_bytes,
            "rssAfterWarmupBytes": self.rss_at_warmup,
            "paddingShare": self.padding_share,
        }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class CountingCollator:
    """Wraps a Trainer's collator: real (non-padding) and computed input tokens of every batch."""

    def __init__(self, inner: Any, group: int = 1) -> None:
        self.inner = inner
        self.group = group  # micro-batches per optimizer step
        self.batch_tokens: list[int] = []
        self.batch_positions: list[int] = []  # padding included

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        mask = batch.get("attention_mask")
        self.batch_positions.append(int(batch["input_ids"].numel()))
        self.batch_tokens.append(int(mask.sum()) if mask is not None else self.batch_positions[-1])
        return batch

    def _per_step(self, counts: list[int]) -> list[int]:
        g = self.group
        return [sum(counts[i : i + g]) for i in range(0, len(counts) - g + 1, g)]

    @property
    def tokens(self) -> list[int]:
        """Real tokens per optimizer step."""
        return self._per_step(self.batch_tokens)

    @property
    def positions(self) -> list[int]:
        return self._per_step(self.batch_positions)
