"""Tiny, locally built models and tokenizers: for tests, benchmarks and `make demo`.

No model hub is reachable where kubetune is tested, so everything here is built on
the spot and is deterministic:

- `build_tokenizer()` trains a small byte-level BPE tokenizer (any text encodes; no
  unknown token) on a built-in corpus or on texts you pass, with ChatML control tokens
  (`<|im_start|>`, `<|im_end|>`) as special tokens and, by default, a ChatML chat
  template, like the instruct tokenizers of Qwen2 and others.
- `build_model(tokenizer, arch)` makes a randomly initialised causal LM of a real
  architecture (llama, qwen2, mistral) sized in kilobytes.
- `save_tiny(path)` writes both where `spec.model.source` can point at them.

A real production tokenizer, for realistic token counts, is in test support
(`tests.support.tokenizers.mistral_tokenizer`): it needs a dev dependency.

Example::

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, "qwen2")
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

Arch = Literal["llama", "qwen2", "mistral"]

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# The ChatML template of Qwen2-style instruct tokenizers (no default system prompt).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Enough English for a few hundred merges; callers with real data pass their own texts.
_CORPUS = """\
Instruction tuning teaches a pretrained language model to follow requests. Each example
pairs an instruction, sometimes with context, and a response written by a person. The
model is trained only on the response tokens, so it learns to answer rather than to
repeat questions. Packing puts several short examples into one sequence so that no
compute is spent on padding, while position ids restart for each example so that no
token attends across an example boundary. Low-rank adapters train a small number of
parameters on top of a frozen base model quantized to four bits. What is the capital of
France? Paris is the capital of France. Summarize the paragraph below in one sentence.
Classify each animal as a mammal or a bird: dog, eagle, whale, sparrow. Write a short
poem about the sea. Why do camels survive for long without water? When did the airline
start operating? Give me a list of ideas for a birthday party. 0 1 2 3 4 5 6 7 8 9.
"""


def build_tokenizer(
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 512,
    chat_template: str | None = CHATML_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (deterministic for the same texts).

    Special tokens: `<s>` (BOS), `</s>` (EOS), `<pad>`, `<|im_start|>`, `<|im_end|>`.
    `chat_template=None` gives a tokenizer without a chat template, as base models have.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, IM_START, IM_END]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(
        list(texts) if texts is not None else _CORPUS.splitlines(), trainer=trainer
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_model(
    tokenizer: PreTrainedTokenizerBase,
    arch: Arch = "llama",
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    init_std: float = 0.02,
) -> PreTrainedModel:
    """A randomly initialised causal LM of a real architecture, in float32.

    Grouped-query attention (kv_heads < heads) and a vocabulary matching the tokenizer,
    so the same code paths run as for the full-size model. `init_std` is the weights'
    initial standard deviation: with the usual 0.02 the logits of so small a model are
    nearly uniform and LoRA alone moves them slowly (validation loss 4.9 → 4.6 in 40
    steps of a synthetic task); 0.2 gives it features to steer (6.8 → 0.09).
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=_stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(
        config, attn_implementation=attn_implementation, dtype=torch.float32
    )


def save_tiny(
    path: str | Path,
    arch: Arch = "llama",
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 512,
    **model_options: Any,
) -> Path:
    """Write a tiny model and its tokenizer to `path` (a directory), ready for `model.source`.

    `model_options` go to `build_model` (hidden_size, layers, init_std, ...).
    """
    path = Path(path)
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    model = build_model(tokenizer, arch, **model_options)
    model.generation_config.eos_token_id = _stop_token_ids(tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS and, where the tokenizer has it, ChatML's end-of-turn: generation stops at either."""
    ids = [tokenizer.eos_token_id]
    end_of_turn = tokenizer.convert_tokens_to_ids(IM_END)
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.append(end_of_turn)
    return ids
