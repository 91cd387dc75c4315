"""Fixtures for the data pipeline's tests: local tokenizers and TuningJob manifests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.manifest import parse_tuningjob
from kubetune.api.v1alpha1 import TuningJob
from tests.support.tiny import build_tokenizer
from tests.support.tokenizers import mistral_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    """A tiny byte-level BPE tokenizer with ChatML control tokens and template."""
    return build_tokenizer()


@pytest.fixture(scope="session")
def plain_tokenizer():
    """The same without a chat template, as a base model's tokenizer."""
    return build_tokenizer(chat_template=None)


@pytest.fixture(scope="session")
def sp_tokenizer():
    """The real Mistral 7B SentencePiece tokenizer (from mistral-common)."""
    return mistral_tokenizer()


@pytest.fixture
def make_job(tmp_path: Path) -> Callable[..., TuningJob]:
    """A TuningJob for `source`, with dataset/training overrides in camelCase."""

    def make(
        source: str | Path, dataset: dict | None = None, training: dict | None = None, **spec: Any
    ) -> TuningJob:
        return parse_tuningjob(
            {
                "apiVersion": "kubetune.dev/v1alpha1",
                "kind": "TuningJob",
                "metadata": {"name": "test"},
                "spec": {
                    "model": {"source": str(tmp_path / "model")},
                    "dataset": {"source": str(source), "validation": None, **(dataset or {})},
                    "training": {"maxSeqLength": 512, **(training or {})},
                    "output": {"destination": str(tmp_path / "out")},
                    **spec,
                },
            }
        )

    return make
