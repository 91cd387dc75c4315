"""Test tiers follow the folders: tests/unit, tests/integration, tests/e2e.

A test is marked with its folder's tier automatically, so `-m unit` (and so on)
selects a tier without every file repeating the marker. Fixtures for the real
servers live in tests/ground/ (see docs/testing.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "integration", "e2e")

# Real servers as fixtures (tests/ground/).
pytest_plugins = ["tests.ground.s3_fixtures", "tests.support.training_fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))
