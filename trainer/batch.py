"""What a batch holds, as agreed by the data pipeline (which builds it) and the loop.

A batch is a dict of tensors from the collator (data/collate.py): the model inputs
(`MODEL_INPUTS` present in it), `labels` with `IGNORE_INDEX` where a token is not
trained, and counts (`num_trained_tokens`, `num_tokens`, `num_examples`). This module
imports nothing heavy, so the loop and the pipeline can both depend on it.
"""

from __future__ import annotations

from typing import Any

# A label the loss ignores (PyTorch's cross_entropy default ignore_index).
IGNORE_INDEX = -100

# The keys of a batch that are model inputs (labels aside; the trainer computes its own loss).
MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")

Batch = dict[str, Any]
