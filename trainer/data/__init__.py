"""The data pipeline: load → format → split → redact → template → mask → tokenize → pack.

The trainer's API (see docs/data.md):

    prepared = prepare(job, workdir, tokenizer)      # PreparedData: train/validation/test, report
    collate = make_collator(job.spec.training, tokenizer)
"""

from kubetune.trainer.batch import IGNORE_INDEX, MODEL_INPUTS
from kubetune.trainer.data.collate import (
    PackedCollator,
    PaddedCollator,
    make_collator,
)
from kubetune.trainer.data.pipeline import PreparedData, prepare

__all__ = [
    "IGNORE_INDEX",
    "MODEL_INPUTS",
    "PackedCollator",
    "PaddedCollator",
    "PreparedData",
    "make_collator",
    "prepare",
]
