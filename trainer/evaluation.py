"""Evaluation: loss and perplexity on a split, and exact match of generated responses.

The loss is computed exactly as in training (same shifted labels, same per-token
average, summed over ranks), so eval and training losses compare directly;
perplexity is exp(loss). Token accuracy is the share of trained (response) tokens
whose most likely prediction is exactly the reference token, as the OpenAI
fine-tuning API reports it, for train and eval alike. Exact match generates a response greedily for every example
of the test split and compares it, as text stripped of special tokens and surrounding
whitespace, with the reference response: the share that match is reported. It suits
classification-style tasks ("Classify this review: ..." → "positive"), where one
right answer exists.

Examples are recovered from packed rows with `seq_lengths`: the prompt is everything
before the first trained token, the reference the trained tokens after it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune.trainer.batch import IGNORE_INDEX
from kubetune.trainer.distributed import Dist
from kubetune.trainer.logs import terminal_progress
from kubetune.trainer.loop import (
    Collate,
    StopSignal,
    count_tokens,
    loss_and_hits,
    to_device,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossResult:
    loss: float
    perplexity: float
    trained_tokens: int
    examples: int
    token_accuracy: float = 0.0  # share of trained tokens predicted exactly (argmax)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_loss": self.loss,
            f"{prefix}_perplexity": self.perplexity,
            f"{prefix}_token_accuracy": self.token_accuracy,
        }


def evaluate_loss(
    model: Any,
    split: Sequence[dict[str, Any]],
    collate: Collate,
    *,
    batch_size: int,
    dist: Dist,
    device: torch.device,
    autocast: contextlib.AbstractContextManager[Any],
    stop: StopSignal | None = None,
) -> LossResult | None:
    """Per-token loss over the split (sharded over ranks); None when a stop interrupted it."""
    import torch

    model.eval()
    # loss sum, trained tokens, rows, correct predictions
    total = torch.zeros(4, dtype=torch.float64, device=device)
    indices = list(range(dist.rank, len(split), dist.world_size))
    interrupted = False
    bar = terminal_progress(len(indices), desc="evaluating", unit="row", enabled=dist.is_main)
    with torch.no_grad(), bar:
        for start in range(0, len(indices), batch_size):
            if stop is not None and stop.requested:
                interrupted = True
                break
            batch = collate([split[i] for i in indices[start : start + batch_size]])
            trained, _ = count_tokens(batch)
            batch = to_device(batch, device)
            loss, hits = loss_and_hits(model, batch, autocast)
            total[0] += loss.double()
            total[1] += trained
            total[2] += len(indices[start : start + batch_size])
            total[3] += hits.double()
            bar.update(len(indices[start : start + batch_size]))
    model.train()
    if dist.any(interrupted, device):
        return None
    dist.sum(total)
    tokens = int(total[1].item())
    loss = float(total[0].item()) / max(tokens, 1)
    return LossResult(
        loss=loss,
        perplexity=_perplexity(loss),
        trained_tokens=tokens,
        examples=int(total[2].item()),
        token_accuracy=float(total[3].item()) / max(tokens, 1),
    )


@dataclass(frozen=True)
class PromptAndReference:
    prompt: list[int]
    reference: list[int]


def split_examples(row: dict[str, Any]) -> list[PromptAndReference]:
    """The examples in a (packed) row, each as prompt ids and reference response ids."""
    input_ids = list(row["input_ids"])
    labels = list(row["labels"])
    lengths = list(row.get("seq_lengths") or [len(input_ids)])
    found, start = [], 0
    for length in lengths:
        ids, labs = input_ids[start : start + length], labels[start : start + length]
        start += length
        trained = [i for i, label in enumerate(labs) if label != IGNORE_INDEX]
        if trained:
            first = trained[0]
            found.append(
                PromptAndReference(prompt=ids[:first], reference=[ids[i] for i in trained])
            )
    return found


def exact_match(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    split: Sequence[dict[str, Any]],
    *,
    dist: Dist,
    device: torch.device,
    batch_size: int = 8,
    stop_token_ids: Sequence[int] = (),
) -> dict[str, float]:
    """Share of test examples whose greedy generation equals the reference response."""
    import torch

    examples = [e for row in split for e in split_examples(row)]
    mine = examples[dist.rank :: dist.world_size]
    matched = 0
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        longest = max(len(e.reference) for e in chunk)
        outputs = generate(
            model,
            tokenizer,
            [e.prompt for e in chunk],
            max_new_tokens=longest + 4,
            device=device,
            stop_token_ids=stop_token_ids,
        )
        for example, generated in zip(chunk, outputs, strict=True):
            if _text(tokenizer, generated) == _text(tokenizer, example.reference):
                matched += 1
    counts = dist.sum(torch.tensor([matched, len(mine)], dtype=torch.int64, device=device))
    total = int(counts[1].item())
    return {
        "test_exact_match": float(counts[0].item()) / max(total, 1),
        "test_exact_match_examples": float(total),
    }


def generate(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    device: torch.device,
    stop_token_ids: Sequence[int] = (),
) -> list[list[int]]:
    """Greedy continuations of token-id prompts (left-padded into one batch); new ids only."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        attention_mask[row, width - len(prompt) :] = 1
    eos = list(stop_token_ids) or stop_tokens(model, tokenizer)
    model.eval()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos or None,
            use_cache=True,
        )
    model.train()
    results = []
    for row in out[:, width:].tolist():
        # Cut at the first stop token (kept: it is part of what the model was taught).
        for i, token in enumerate(row):
            if eos and token in eos:
                row = row[: i + 1]
                break
        results.append(row)
    return results


def stop_tokens(model: Any, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a response: the model's generation config's EOS ids (which
    include end-of-turn tokens such as <|im_end|> for chat models), else the tokenizer's EOS."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        configured = [configured]
    ids = list(configured or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _text(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def _perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
