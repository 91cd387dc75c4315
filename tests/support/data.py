"""Test data: the Dolly sample in the repository, and writing small JSON Lines files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOLLY = Path(__file__).resolve().parents[1] / "data" / "dolly-sample.jsonl"


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
