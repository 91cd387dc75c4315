"""Benchmark: a QLoRA training step in kubetune, TRL's SFTTrainer and transformers' Trainer.

    .venv/bin/python -m bench.train_step                 # tiny Llama on CPU (make bench-train)
    .venv/bin/python -m bench.train_step --smoke         # seconds: checks that every side runs
    .venv/bin/python -m bench.train_step --scale 1b      # on a GPU machine (~1.1B Llama)
    .venv/bin/python -m bench.train_step --scale 8b      # on a GPU machine (~7.5B Llama)

Same for every contender, in the same run: the model (a Llama of the chosen scale with
random weights, built here, saved as safetensors beside the real Mistral 7B tokenizer
from mistral-common, 32,000 pieces), the data (tests/data/dolly-sample.jsonl, rendered
with the built-in `mistral` template, tokenized by kubetune's encoder with the loss on
responses, truncated to the sequence length), QLoRA (NF4 base with double
quantization, LoRA r 16, alpha 32, dropout 0.05 on every linear layer, activation
checkpointing without re-entrant autograd, sdpa attention), the optimizer (torch AdamW
on CPU, bitsandbytes' paged 8-bit AdamW on GPU; lr 2e-4 constant, no weight decay,
gradients clipped at 1.0) and the tokens per optimizer step. Contenders:

- kubetune: `kubetune.trainer.recipe.train()`, what `kubetune train` runs: its own data
  pipeline (bin-packed rows of `seq` tokens, padding-free, position ids restarting per
  example) and its own loop; `batch` packed rows per step.
- TRL: `SFTTrainer` with `packing=True` (best-fit decreasing) and `padding_free=True`,
  `completion_only_loss=True`, on the same tokenized examples (input_ids and a
  completion mask); `batch` packed rows per step, flattened into one padding-free row.
- HF Trainer: `transformers.Trainer` with the usual QLoRA recipe
  (`prepare_model_for_kbit_training`, `get_peft_model`) and padded batches
  (`DataCollatorForSeq2Seq`, padding to the longest example of each batch, default
  random sampler): as many examples per optimizer step as fill `batch` x `seq` tokens
  on average, in micro-batches of at most `hf_micro_batch` (gradient accumulation).

Attention is sdpa everywhere by default (kubetune's loader uses it). TRL documents
padding-free batches for flash-attention; on a GPU with the flash-attn package
(not in kubetune's lock) `--attention flash_attention_2` gives TRL and HF Trainer
that kernel.

Each contender runs in its own process (clean memory figures, no shared caches), for
`--rounds` rounds in a rotated order. Instrumentation is the same for all three and
touches none of them: a global optimizer-step hook (`torch.optim.optimizer.
register_optimizer_step_post_hook`) timestamps every optimizer step; the first
`warmup` steps are not timed; peak memory is reset after warmup and read after the last
timed step (CPU: peak RSS of the process, reset through /proc/self/clear_refs; GPU:
`torch.cuda.max_memory_allocated`). Tokens are the real (non-padding) input tokens of
each step: from the batches each Trainer's collator produced, and from kubetune's own
metrics.jsonl (`tokens_total`, logged every step).

Model FLOPs and MFU, per real token (stated in docs/benchmarks.md):

    F = 4 N_base + 6 N_lora + 12 L (n_heads d_head) c

N_base: weights of the base model's matmuls (every linear layer, the LM head
included; embeddings are lookups). The usual 6N (Kaplan et al. 2020, "Scaling Laws",
sec. 2.1: 2N forward, 4N backward) splits the backward into 2N for the gradients of
the activations and 2N for those of the weights; the frozen base needs no weight
gradients (Hu et al. 2021, LoRA, sec. 4.2), leaving 4 N_base, while the adapters pay
the full 6 N_lora. Attention (PaLM, Chowdhery et al. 2022, appendix B: 12 L H Q T,
counted non-causally there) is counted causally and per example: c is the mean number
of positions a token attends to, sum n(n+1)/2 / sum n over the examples' lengths n, as
packed and padded batches both mask across examples. Not counted: activation
recomputation (PaLM's model FLOPs exclude it), NF4 dequantization, padding, norms and
softmax. MFU = F x tokens/s / peak. Peak: the GPU's dense bf16 tensor peak from its
datasheet; on CPU no datasheet figure applies to a shared virtual machine, so the
report gives achieved FLOP/s and their ratio to a dense fp32 matmul measured on the
same machine in the same run (an attainable ceiling, not a hardware peak).

The modules: `scales` (the Llama shapes and how each runs), `flops` (parameters, model
FLOPs per token, the GPU peaks and the measured matmul ceiling), `inputs` (the model
folder, the TuningJob every contender follows, the tokenized examples), `clock` (the
instrumentation inside each worker: optimizer-step times, memory peak, tokens per
step), `contenders` (kubetune, TRL and HF Trainer, each as it is used), `harness` (each
contender in its own process, rounds, the summary and its table) and `__main__` (the
command line).
"""
