"""The prepared data as the training loop sees it: splits, collator, lengths, summary.

`prepare_data` runs the data pipeline (`kubetune.trainer.data`, docs/data.md) and
adapts its result for `recipe.train`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import TuningJob
from kubetune.trainer.storage import Storage


@dataclass
class PreparedSplits:
    """The prepared data as the loop needs it."""

    train: Any  # a sequence of rows: input_ids, labels, position_ids, seq_lengths
    validation: Any | None
    test: Any | None
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    lengths: list[int] | None = None  # tokens per row (for length bucketing when not packing)
    packing_efficiency: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)  # for the model card and summary
    report: dict[str, Any] | None = None  # the pipeline's full report: prepare-report.json


def prepare_data(job: TuningJob, workdir: Path, tokenizer: Any, storage: Storage) -> PreparedSplits:
    """Run the data pipeline (`kubetune.trainer.data`, docs/data.md) and adapt it for the loop.

    The tokenizer gets the chat template the pipeline used, so the exported adapter's
    tokenizer formats prompts exactly as in training. Cached under `workdir`: ranks
    other than 0, which run this after rank 0, load the cached result.
    """
    import pyarrow.compute as pc

    from kubetune.trainer import data as pipeline

    prepared = pipeline.prepare(job, workdir, tokenizer, storage)
    if prepared.chat_template is not None:
        tokenizer.chat_template = prepared.chat_template
    lengths = None
    if not job.spec.training.packing:
        lengths = pc.list_value_length(prepared.train.data.column("input_ids")).to_pylist()
    report = prepared.report
    return PreparedSplits(
        train=prepared.train,
        validation=prepared.validation,
        test=prepared.test,
        collate=pipeline.make_collator(job.spec.training, tokenizer),
        lengths=lengths,
        packing_efficiency=prepared.packing_efficiency,
        summary={
            "examples": report.get("examples", {}).get("kept"),
            "tokens": report.get("tokens"),
            "trained tokens": report.get("trainedTokens"),
            "packing efficiency": report.get("packingEfficiency"),
            "template": report.get("template"),
            "packing": report.get("settings", {}).get("packing"),
            "validation examples": report.get("splits", {})
            .get("validation", {})
            .get("examples", 0),
        },
        report=report,
    )
