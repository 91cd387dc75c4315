"""Packing does not leak across examples: a packed row's logits equal each example's alone.

transformers builds a block-diagonal causal mask from position ids that restart per
example, for eager and sdpa attention, but only when there is no attention mask and
no KV cache. The collator's batches satisfy both (use_cache=False); the negative
controls show what happens otherwise, so this test can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kubetune.trainer.batch import IGNORE_INDEX, MODEL_INPUTS
from kubetune.trainer.data.collate import PackedCollator
from kubetune.trainer.data.packing import build_packs
from tests.support.tiny import build_model, build_tokenizer

TEXTS = [
    "What is the capital of France? Paris is the capital of France.",
    "Write a short poem about the sea.",
    "Classify each animal as a mammal or a bird: dog, eagle, whale, sparrow. Dog and whale are mammals.",
    "Why do camels survive for long without water?",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def examples(tokenizer):
    ids = [np.asarray(tokenizer(t).input_ids, dtype=np.int32) for t in TEXTS]
    labels = []
    for x in ids:
        y = x.copy()
        y[0] = IGNORE_INDEX
        y[: len(y) // 3] = IGNORE_INDEX  # an untrained prompt part, as after masking
        labels.append(y)
    return ids, labels


def _inputs(batch: dict) -> dict:
    """What the trainer passes the model: the model inputs, and no KV cache."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch} | {"use_cache": False}


def _alone(model, ids: np.ndarray) -> torch.Tensor:
    return model(input_ids=torch.as_tensor(ids[None], dtype=torch.long), use_cache=False).logits[0]


def _slices(seq_lengths):
    start = 0
    for n in seq_lengths:
        yield slice(start, start + n)
        start += n


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("flatten", [False, True])
def test_packed_logits_equal_each_example_alone(tokenizer, examples, arch, attn, mode, flatten):
    ids, labels = examples
    model = build_model(tokenizer, arch, attn_implementation=attn)
    model.train(mode == "train")  # the tiny configs have no dropout: train mode is deterministic
    # Two packs of two examples each, batched together (rows of different lengths get padded).
    table = build_packs(ids, labels, [[0, 1], [2, 3]])
    rows = table.to_pylist()
    batch = PackedCollator(tokenizer.pad_token_id, flatten=flatten)(rows)
    with torch.set_grad_enabled(mode == "train"):
        packed = model(**_inputs(batch)).logits
        order = [0, 1, 2, 3]
        lengths = [n for row in rows for n in row["seq_lengths"]]
        if flatten:
            segments = [(0, s) for s in _slices(lengths)]
        else:
            segments = [(r, s) for r, row in enumerate(rows) for s in _slices(row["seq_lengths"])]
        for example, (row, where) in zip(order, segments, strict=True):
            expected = _alone(model, ids[example])
            torch.testing.assert_close(packed[row, where], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_the_examples_losses(tokenizer, examples, attn):
    """Same loss terms: nothing is predicted across an example boundary."""
    ids, labels = examples
    model = build_model(tokenizer, "llama", attn_implementation=attn).eval()
    batch = PackedCollator(tokenizer.pad_token_id, flatten=True)(
        build_packs(ids, labels, [[0, 1, 2, 3]]).to_pylist()
    )
    with torch.no_grad():
        packed_loss = model(**_inputs(batch), labels=batch["labels"]).loss
        total, count = 0.0, 0
        for x, y in zip(ids, labels, strict=True):
            n = int((y[1:] != IGNORE_INDEX).sum())
            out = model(
                input_ids=torch.as_tensor(x[None]).long(),
                labels=torch.as_tensor(y[None]).long(),
                use_cache=False,
            )
            total += out.loss.item() * n
            count += n
    assert batch["num_trained_tokens"] == count
    assert packed_loss.item() == pytest.approx(total / count, rel=1e-5)


def test_a_kv_cache_or_plain_positions_would_leak(tokenizer, examples):
    """Negative controls: the same packed row leaks when a cache is on, or positions do not restart."""
    ids, labels = examples
    model = build_model(tokenizer, "llama").eval()
    batch = PackedCollator(tokenizer.pad_token_id)(build_packs(ids, labels, [[0, 1]]).to_pylist())
    second = slice(len(ids[0]), len(ids[0]) + len(ids[1]))
    expected = _alone(model, ids[1])
    with torch.no_grad():
        isolated = model(**_inputs(batch)).logits[0, second]
        with_cache = model(**{**_inputs(batch), "use_cache": True}).logits[0, second]
        plain = model(**{**_inputs(batch), "position_ids": None}).logits[0, second]
    torch.testing.assert_close(isolated, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(with_cache, expected, atol=1e-3)
    assert not torch.allclose(plain, expected, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_logits_equal_on_cuda_sdpa(tokenizer, examples, dtype):
    """The same proof with CUDA's sdpa kernels, which take the block-diagonal mask too."""
    ids, labels = examples
    model = build_model(tokenizer, "llama").to("cuda", dtype).eval()
    rows = build_packs(ids, labels, [[0, 1, 2, 3]]).to_pylist()
    batch = {
        k: v.cuda() if isinstance(v, torch.Tensor) else v
        for k, v in PackedCollator(tokenizer.pad_token_id)(rows).items()
    }
    tolerance = (
        {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    )
    with torch.no_grad():
        packed = model(**_inputs(batch)).logits[0]
        for example, where in zip(range(4), _slices(rows[0]["seq_lengths"]), strict=True):
            alone = model(
                input_ids=torch.as_tensor(ids[example][None]).long().cuda(), use_cache=False
            ).logits[0]
            torch.testing.assert_close(packed[where].float(), alone.float(), **tolerance)
