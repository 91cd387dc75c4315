"""Pytest fixtures for trainer tests (loaded by tests/conftest.py).

- `tiny_model` (session): a folder with a tiny random Llama (hidden 64, 2 layers) and its
  tokenizer (tests.support.tiny), built once.
- `synthetic_data` (session): a JSONL file of the synthetic classification task.

Torch runs on one thread in tests (OMP_NUM_THREADS=1, set before torch is imported,
inherited by subprocesses): tiny matrices gain nothing from more, and on a loaded
2-core CI machine OpenMP threads spinning against each other make a step 10-30x slower.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import training

# Subprocesses (kubetune train, torchrun workers) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return training.save_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "model")


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return training.write_records(
        tmp_path_factory.mktemp("data") / "animals.jsonl", training.synthetic_records(240)
    )
