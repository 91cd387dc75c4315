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


def data_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The model card's and training-summary.json's data figures, split by split.

    The training split's figures alone say what the adapter was trained on; the
    report's totals would count the held-out splits too. A packed row holds several
    examples: both counts are given.
    """
    summary: dict[str, Any] = {}
    for split, figures in report.get("splits", {}).items():
        summary[f"{split} examples"] = figures.get("examples")
        summary[f"{split} rows"] = figures.get("rows")
        summary[f"{split} tokens"] = figures.get("tokens")
        summary[f"{split} trained tokens"] = figures.get("trainedTokens")
    summary["packing efficiency"] = report.get("packingEfficiency")
    summary["packing"] = report.get("settings", {}).get("packing")  # off for small data
    summary["template"] = report.get("template")
    return summary


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
        summary=data_summary(report),
        report=report,
    )
