"""The Llama shapes the train-step benchmark runs, and how each runs (bench/train_step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scale:
    """A Llama shape and how to run it. vocab is the tokenizer's (Mistral 7B: 32,000)."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    seq: int  # tokens per packed row, and the truncation length
    batch: int  # packed rows per optimizer step
    warmup: int  # untimed steps
    steps: int  # timed steps
    rounds: int  # each contender this many times, in rotated order
    gpu: bool
    vocab: int = 32_000
    # CPU: torch threads. One: on a machine whose cores other work shares, a second
    # OpenMP thread stalls every parallel region whenever its core is taken (steps were
    # measured 10-30x slower, erratically); one thread is slower but steady. 0: torch's default.
    threads: int = 0
    # HF Trainer's padded examples per micro-batch at most; the optimizer step
    # accumulates micro-batches up to the packed contenders' tokens per step.
    hf_micro_batch: int = 8
    # TRL's and HF Trainer's attention (kubetune's loader uses sdpa). On a GPU with the
    # flash-attn package installed, flash_attention_2 is what TRL recommends for padding-free.
    attention: str = "sdpa"
    # mistral: the real Mistral 7B tokenizer (32,000 pieces; converting it takes seconds).
    # tiny: a byte-level BPE of `vocab` pieces trained on the Dolly sample in a second,
    # for the smoke mode.
    tokenizer: str = "mistral"


SCALES = {
    "smoke": Scale(
        "smoke", hidden=64, layers=2, intermediate=172, heads=2, kv_heads=1,
        seq=256, batch=1, warmup=1, steps=2, rounds=1, gpu=False, threads=1,
        vocab=2048, tokenizer="tiny",
    ),
    "tiny": Scale(
        "tiny", hidden=256, layers=4, intermediate=688, heads=4, kv_heads=2,
        seq=512, batch=1, warmup=2, steps=10, rounds=5, gpu=False, threads=1,
    ),
    # TinyLlama 1.1B's shape.
    "1b": Scale(
        "1b", hidden=2048, layers=22, intermediate=5632, heads=32, kv_heads=4,
        seq=2048, batch=4, warmup=5, steps=20, rounds=3, gpu=True,
    ),
    # Llama 3.1 8B's shape with the 32,000-piece tokenizer (7.5B parameters).
    "8b": Scale(
        "8b", hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8,
        seq=2048, batch=2, warmup=3, steps=10, rounds=2, gpu=True,
    ),
}  # fmt: skip


def llama_config(scale: Scale) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=scale.vocab,
        hidden_size=scale.hidden,
        intermediate_size=scale.intermediate,
        num_hidden_layers=scale.layers,
        num_attention_heads=scale.heads,
        num_key_value_heads=scale.kv_heads,
        max_position_embeddings=max(4096, scale.seq),
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
