"""Test tiers follow the folders: tests/unit, tests/integration, tests/e2e, tests/faults,
tests/kind.

A test is marked with its folder's tier automatically and runs in the tiers' order
(unit first, kind last), so `-m unit` (and so on)
selects a tier without every file repeating the marker. Fixtures for the real
servers live in tests/ground/ (see docs/testing.md).

Tests marked `gpu` need a CUDA device. Where there is none (CI, laptops) they are
skipped with that reason, and only then: the GPU path's CPU-runnable parts are
tested unmarked.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

TIERS = ("unit", "integration", "e2e", "faults", "kind")

# Real servers as fixtures (tests/ground/); tiny models and runs for the trainer, and
# kubetune's built images (tests/support/).
pytest_plugins = [
    "tests.ground.fixtures",
    "tests.ground.s3_fixtures",
    "tests.support.training_fixtures",
    "tests.support.images",
]


@cache
def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _tier_rank(item: pytest.Item) -> int:
    parts = Path(str(item.fspath)).parts
    return next((rank for rank, tier in enumerate(TIERS) if tier in parts), len(TIERS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The cheap tiers first, the kind cluster last: a broken unit fails in seconds, not
    # after twenty minutes of clusters. Stable, so each file keeps its own order.
    items.sort(key=_tier_rank)
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("gpu") and not _cuda_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device; none on this machine"))
