"""Batches for the model: padding-free packed batches, or padded ones.

The trainer uses one collator (`make_collator`): its loop (trainer/loop.py) takes each
micro-batch's row indices from `sampling.epoch_micro_batches` and collates those rows.
A batch (`kubetune.trainer.batch`) is a dict: the model inputs (`MODEL_INPUTS` present in it: `input_ids`, `position_ids`
for packed rows or `attention_mask` for padded ones), `labels` (-100 where not
trained), and counts: `num_trained_tokens` (the loss terms: labels other than -100,
none of which is the first token of an example, so it is also the number of
shifted targets), `num_tokens` (real tokens, padding excluded) and `num_examples`.
Normalise the loss by trained tokens across gradient accumulation: sum the
per-token losses, divide by the total `num_trained_tokens` of the accumulated
micro-batches. Call the model with `use_cache=False` (below).

Packed rows (`PackedCollator`) carry `position_ids` that restart at 0 for every
example and no attention mask. transformers (5.x, `masking_utils.
find_packed_sequence_indices`) then builds a block-diagonal causal mask from the
position ids for the eager and sdpa attention implementations, and flash-attention
derives its varlen sequence boundaries from them, so no token attends across an
example. That detection only runs with no attention mask and no KV cache, and models
create a cache whenever `use_cache` is on (their config's default, even in training
mode): so `inputs` carries `use_cache=False`. tests/unit/test_packing_isolation.py
proves the isolation (logits of a packed row equal each example's logits alone).

- `flatten=False` (default): each pack is one row; rows of a batch are right-padded
  to the longest, the padding forming its own dummy sequence with label -100. Best
  for sdpa/eager, whose mask is (rows x length x length).
- `flatten=True`: the batch's packs are concatenated into a single row (batch size 1),
  like transformers' `DataCollatorWithFlattening`: no padding at all; for
  flash-attention, whose cost does not grow with the flattened length squared.

Without packing (`PaddedCollator`), each row is one example, right-padded with an
attention mask; `sampling.epoch_micro_batches` groups examples of similar length into
micro-batches so that little is padded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kubetune.trainer.batch import IGNORE_INDEX, Batch
from kubetune.trainer.errors import InvalidConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from kubetune.api.v1alpha1 import TrainingSpec

Row = Mapping[str, Any]  # a row of a prepared split: input_ids, labels, position_ids, seq_lengths


class PackedCollator:
    """Packed rows -> a padding-free Batch (see the module docstring)."""

    def __init__(self, pad_token_id: int, flatten: bool = False):
        self.pad_token_id = pad_token_id
        self.flatten = flatten

    def __call__(self, rows: Sequence[Row]) -> Batch:
        ids = [np.asarray(r["input_ids"], dtype=np.int64) for r in rows]
        labels = [np.asarray(r["labels"], dtype=np.int64) for r in rows]
        positions = [np.asarray(r["position_ids"], dtype=np.int64) for r in rows]
        examples = sum(len(r["seq_lengths"]) for r in rows)
        if self.flatten:
            ids, labels, positions = (
                [np.concatenate(ids)],
                [np.concatenate(labels)],
                [np.concatenate(positions)],
            )
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_token_id, dtype=np.int64)
        label_rows = np.full((len(ids), width), IGNORE_INDEX, dtype=np.int64)
        # Padding gets positions 0, 1, ...: a dummy sequence of its own, which nothing real attends to.
        position_rows = np.tile(np.arange(width, dtype=np.int64), (len(ids), 1))
        for i, (x, y, p) in enumerate(zip(ids, labels, positions, strict=True)):
            input_ids[i, : len(x)] = x
            label_rows[i, : len(y)] = y
            position_rows[i, : len(p)] = p
            position_rows[i, len(p) :] -= len(p)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(label_rows),
            "position_ids": torch.from_numpy(position_rows),
            "num_trained_tokens": int((label_rows != IGNORE_INDEX).sum()),
            "num_tokens": sum(len(x) for x in ids),
            "num_examples": examples,
        }


class PaddedCollator:
    """One example per row -> a right-padded Batch with an attention mask."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: Sequence[Row]) -> Batch:
        ids = [np.asarray(r["input_ids"], dtype=np.int64) for r in rows]
        labels = [np.asarray(r["labels"], dtype=np.int64) for r in rows]
        width = max(len(x) for x in ids)
        multiple = self.pad_to_multiple_of
        width = -(-width // multiple) * multiple if multiple > 1 else width
        input_ids = np.full((len(ids), width), self.pad_token_id, dtype=np.int64)
        label_rows = np.full((len(ids), width), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, (x, y) in enumerate(zip(ids, labels, strict=True)):
            input_ids[i, : len(x)] = x
            label_rows[i, : len(y)] = y
            mask[i, : len(x)] = 1
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(label_rows),
            "attention_mask": torch.from_numpy(mask),
            "num_trained_tokens": int((label_rows != IGNORE_INDEX).sum()),
            "num_tokens": int(mask.sum()),
            "num_examples": len(rows),
        }


def make_collator(
    training: TrainingSpec, tokenizer: PreTrainedTokenizerBase, flatten: bool = False
) -> PackedCollator | PaddedCollator:
    """The collator for `training.packing`; `flatten` for flash-attention (see the module docstring).

    Padding uses the tokenizer's pad token, else EOS (padding is never attended to nor trained).
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise InvalidConfigError(
            "the model's tokenizer has neither a pad nor an EOS token to pad batches with"
        )
    return PackedCollator(pad, flatten=flatten) if training.packing else PaddedCollator(pad)
