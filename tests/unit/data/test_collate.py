"""Collators: model inputs, trained-token counts, padding."""

from __future__ import annotations

import torch

from kubetune.api.v1alpha1 import TrainingSpec
from kubetune.trainer.data import (
    PackedCollator,
    PaddedCollator,
    make_collator,
)

PACKS = [
    {
        "input_ids": [5, 6, 7, 8, 9],
        "labels": [-100, 6, 7, -100, 9],
        "position_ids": [0, 1, 2, 0, 1],
        "seq_lengths": [3, 2],
    },
    {"input_ids": [3, 4], "labels": [-100, 4], "position_ids": [0, 1], "seq_lengths": [2]},
]


def test_packed_rows_are_padded_as_a_dummy_sequence():
    inputs = PackedCollator(pad_token_id=0)(PACKS)
    assert inputs["input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 4, 0, 0, 0]]
    assert inputs["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, 4, -100, -100, -100]]
    assert inputs["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert "attention_mask" not in inputs
    assert (inputs["num_trained_tokens"], inputs["num_tokens"], inputs["num_examples"]) == (4, 7, 3)


def test_flattened_batch_is_one_row_without_padding():
    batch = PackedCollator(pad_token_id=0, flatten=True)(PACKS)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 3, 4]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert (batch["num_trained_tokens"], batch["num_tokens"], batch["num_examples"]) == (4, 7, 3)


def test_padded_batch_has_an_attention_mask():
    rows = [
        {
            "input_ids": [1, 2, 3],
            "labels": [-100, 2, 3],
            "position_ids": [0, 1, 2],
            "seq_lengths": [3],
        },
        {"input_ids": [4], "labels": [-100], "position_ids": [0], "seq_lengths": [1]},
    ]
    batch = PaddedCollator(pad_token_id=0, pad_to_multiple_of=4)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100], [-100, -100, -100, -100]]
    assert (batch["num_trained_tokens"], batch["num_tokens"], batch["num_examples"]) == (2, 4, 2)


def test_make_collator_follows_packing_and_works_with_a_dataloader(tokenizer):
    packed = make_collator(TrainingSpec(packing=True), tokenizer)
    assert isinstance(packed, PackedCollator) and packed.pad_token_id == tokenizer.pad_token_id
    assert isinstance(make_collator(TrainingSpec(packing=False), tokenizer), PaddedCollator)
    loader = torch.utils.data.DataLoader(PACKS, batch_size=2, collate_fn=packed, pin_memory=False)
    (batch,) = list(loader)
    assert batch["input_ids"].shape == (2, 5) and batch["num_trained_tokens"] == 4
