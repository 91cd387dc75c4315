"""What every benchmark in bench/ records besides its figures: machine, versions, load, command.

Each benchmark prints a small table and writes one JSON document:

    {"benchmark": ..., "command": ..., "when": ..., "machine": {...}, "versions": {...},
     "load": {"before": [1, 5, 15 min], "after": [...]}, "smoke": bool, "results": ...}

The load averages matter here: the development machine's cores are shared with other
work, so a figure measured under a load of 3 on 2 cores is not comparable with one
measured idle. Ratios from one interleaved run are what the docs quote.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "boto3",
    "s3transfer",
    "botocore",
    "kubetune",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def gpu() -> dict[str, Any] | None:
    """The CUDA device the benchmark can use, or None (torch is imported only if already loaded)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memoryGiB": round(props.total_memory / 1024**3, 1),
        "count": torch.cuda.device_count(),
    }


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memoryGiB": memory_gib(),
        "gpu": gpu(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def load() -> list[float]:
    """1, 5 and 15-minute load averages (what `uptime` prints)."""
    return [round(x, 2) for x in os.getloadavg()]


def command() -> str:
    """The command line as typed: `python -m bench.x ...` for a module run with -m."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return shlex.join(["python", "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]])
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):
        script = script.relative_to(ROOT)
    return shlex.join(["python", str(script), *sys.argv[1:]])


class Report:
    """Collects a run's context and writes the JSON document at the end."""

    def __init__(self, name: str, *, smoke: bool, settings: dict[str, Any]) -> None:
        self.document: dict[str, Any] = {
            "benchmark": name,
            "command": command(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "smoke": smoke,
            "settings": settings,
            "machine": machine(),
            "versions": versions(),
            "load": {"before": load()},
        }

    def finish(self, results: Any, path: Path | None) -> dict[str, Any]:
        self.document["load"]["after"] = load()
        self.document["machine"]["gpu"] = gpu()  # torch may have been imported since
        self.document["results"] = results
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.document, indent=2) + "\n")
            print(f"wrote {path}")
        return self.document

    def header(self) -> str:
        m = self.document["machine"]
        return (
            f"# {m['cpu']}, {m['cores']} cores, {m['memoryGiB']} GiB; "
            f"load {self.document['load']['before']}"
        )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, best (max for rates) and spread of repeated measurements."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }
