"""The data pipeline: load → format → split → redact → template → mask → tokenize → pack.

The trainer's API (see docs/data.md):

    prepared = prepare(job, workdir, tokenizer)      # PreparedData: train/validation/test, report
    collate = make_collator(job.spec.training, tokenizer)
    LengthBucketedBatchSampler(lengths, batch_size, seed)   # when training.packing is off
"""

from kubetune.trainer.batch import IGNORE_INDEX, MODEL_INPUTS
from kubetune.trainer.data.collate import (
    LengthBucketedBatchSampler,
    PackedCollator,
    PaddedCollator,
    make_collator,
)
from kubetune.trainer.data.pipeline import PreparedData, prepare

__all__ = [
    "IGNORE_INDEX",
    "MODEL_INPUTS",
    "LengthBucketedBatchSampler",
    "PackedCollator",
    "PaddedCollator",
    "PreparedData",
    "make_collator",
    "prepare",
]
