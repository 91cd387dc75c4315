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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, Report, markdown_table

DOLLY = ROOT / "tests" / "data" / "dolly-sample.jsonl"
CONTENDERS = ("kubetune", "trl", "hf")
LABELS = {
    "kubetune": "kubetune (packed, padding-free)",
    "trl": "TRL SFTTrainer (packing, padding_free)",
    "hf": "HF Trainer (padded batches)",
}
SEED = 42


# ---------------------------------------------------------------------------
# Scales


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


def parameter_counts(scale: Scale, lora_r: int) -> dict[str, int]:
    """Weights in matmuls (base and adapters) and in total, from the Llama shape alone."""
    d, head = scale.hidden, scale.hidden // scale.heads
    q_out, kv_out = scale.heads * head, scale.kv_heads * head
    linears = [  # (in, out) of every linear layer of one decoder block
        (d, q_out),
        (d, kv_out),
        (d, kv_out),
        (q_out, d),
        (d, scale.intermediate),
        (d, scale.intermediate),
        (scale.intermediate, d),
    ]
    per_layer = sum(i * o for i, o in linears)
    lora_per_layer = sum(lora_r * (i + o) for i, o in linears)
    lm_head = d * scale.vocab
    return {
        "base_matmul": scale.layers * per_layer + lm_head,
        "lora": scale.layers * lora_per_layer,
        "total": scale.layers * (per_layer + 2 * d) + 2 * lm_head + d,  # + norms, embeddings
    }


def flops_per_token(scale: Scale, lora_r: int, attended: float) -> float:
    counts = parameter_counts(scale, lora_r)
    attention = 12 * scale.layers * scale.hidden * attended  # n_heads * d_head == hidden
    return 4 * counts["base_matmul"] + 6 * counts["lora"] + attention


# Dense bf16 tensor-core peaks (no sparsity), from NVIDIA's datasheets.
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100 80GB HBM3": 989e12,  # H100 SXM
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "A100": 312e12,
    "L40S": 362e12,
}


def gpu_peak(name: str) -> float | None:
    for key, peak in GPU_PEAK_BF16.items():
        if all(part in name for part in key.split()):
            return peak
    return None


# ---------------------------------------------------------------------------
# Shared inputs: the model folder and the tokenized examples


LORA = {"r": 16, "alpha": 32, "dropout": 0.05}


def job_manifest(
    scale: Scale, model: Path, output: Path, *, packing: bool, max_steps: int
) -> dict[str, Any]:
    """The TuningJob every contender's settings follow (kubetune runs it as is)."""
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TuningJob",
        "metadata": {"name": f"bench-{scale.name}"},
        "spec": {
            "model": {"source": str(model)},
            "dataset": {
                "source": str(DOLLY),
                "format": "dolly",
                "template": "mistral",
                "validation": None,
            },
            "method": {
                "type": "qlora",
                "lora": {**LORA, "targetModules": ["all-linear"]},
                "gradientCheckpointing": True,
            },
            "training": {
                "maxSteps": max_steps,
                "batchSize": scale.batch,
                "gradientAccumulation": 1,
                "maxSeqLength": scale.seq,
                "packing": packing,
                "lossOn": "responses",
                "learningRate": 2e-4,
                "lrScheduler": "constant",
                "warmupRatio": 0.0,
                "weightDecay": 0.0,
                "maxGradNorm": 1.0,
                "logEvery": 1,
                "checkpointEvery": 1_000_000,
                "evalEvery": 1_000_000,
                "seed": SEED,
            },
            "output": {"destination": str(output)},
            "resources": {"gpus": 1 if scale.gpu else 0},
        },
    }


def build_model_folder(scale: Scale, model_dir: Path) -> Path:
    """A Llama of `scale` with random weights (safetensors) and the Mistral 7B tokenizer.

    The tokenizer carries the built-in `mistral` chat template. Reused when present.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from kubetune.trainer.data.templates import BUILTIN
    from tests.support.tiny import build_tokenizer
    from tests.support.tokenizers import mistral_tokenizer

    if (model_dir / "config.json").exists():
        return model_dir
    if scale.tokenizer == "tiny":
        texts = [
            " ".join((r["instruction"], r["context"], r["response"]))
            for r in map(json.loads, DOLLY.read_text().splitlines())
        ]
        tokenizer = build_tokenizer(texts, vocab_size=scale.vocab)
    else:
        tokenizer = mistral_tokenizer()
    if len(tokenizer) > scale.vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} pieces; the model {scale.vocab}")
    tokenizer.chat_template = BUILTIN["mistral"]
    torch.manual_seed(SEED)
    # On the CPU even for GPU scales: this process then holds no GPU memory while the
    # contenders' processes run.
    dtype = torch.bfloat16 if scale.gpu else torch.float32
    model = AutoModelForCausalLM.from_config(llama_config(scale), dtype=dtype)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def build_inputs(scale: Scale, workdir: Path) -> dict[str, Any]:
    """The model folder and the tokenized examples for TRL and HF Trainer."""
    from transformers import AutoTokenizer

    from kubetune.api.manifest import parse_tuningjob
    from kubetune.trainer.data import prepare

    quiet()
    model_dir = build_model_folder(scale, workdir / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    # One example per row, as kubetune's pipeline encodes them: TRL packs them itself,
    # HF Trainer pads them.
    job = parse_tuningjob(
        job_manifest(scale, model_dir, workdir / "unused", packing=False, max_steps=1)
    )
    prepared = prepare(job, workdir / "prepare", tokenizer)
    rows = prepared.train.select_columns(["input_ids", "labels"])
    examples = workdir / "examples.parquet"
    rows.to_parquet(str(examples))
    lengths = [len(x) for x in rows["input_ids"]]
    return {
        "model": str(model_dir),
        "examples": str(examples),
        "exampleCount": len(lengths),
        "tokens": sum(lengths),
        "meanExampleTokens": sum(lengths) / len(lengths),
        # Mean positions a token attends to, causally, within its own example.
        "attendedPositions": sum(n * (n + 1) / 2 for n in lengths) / sum(lengths),
    }


# ---------------------------------------------------------------------------
# Instrumentation (inside each worker)


class StepClock:
    """Timestamps every optimizer step of any optimizer; memory peak over the timed steps."""

    def __init__(self, warmup: int, steps: int, cuda: bool) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.warmup, self.steps, self.cuda = warmup, steps, cuda
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # this process's CPU seconds, every thread
        self.peak_bytes: int | None = None
        self.rss_at_warmup: int | None = None
        self.padding_share: float | None = None  # where the runner can tell
        self.handle = register_optimizer_step_post_hook(self._on_step)

    def _on_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())
        done = len(self.times)
        if done == self.warmup:
            self.rss_at_warmup = _status_kib("VmRSS") * 1024
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            else:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        elif done == self.warmup + self.steps:
            if self.cuda:
                self.peak_bytes = torch.cuda.max_memory_allocated()
            else:
                self.peak_bytes = _status_kib("VmHWM") * 1024

    def result(self, step_tokens: list[int]) -> dict[str, Any]:
        w, n = self.warmup, self.steps
        if len(self.times) < w + n or len(step_tokens) < w + n:
            raise RuntimeError(
                f"expected {w + n} optimizer steps with token counts, saw {len(self.times)} steps "
                f"and {len(step_tokens)} counts"
            )
        seconds = self.times[w + n - 1] - self.times[w - 1]
        cpu_seconds = self.cpu_times[w + n - 1] - self.cpu_times[w - 1]
        tokens = sum(step_tokens[w : w + n])
        return {
            "seconds": seconds,
            "cpuSeconds": cpu_seconds,
            "tokens": tokens,
            "tokensPerSecond": tokens / seconds,
            # Steadier than wall-clock time where other work shares the cores (CPU runs only).
            "tokensPerCpuSecond": tokens / cpu_seconds if cpu_seconds > 0 else None,
            "stepSeconds": [
                round(b - a, 4) for a, b in zip(self.times[w - 1 :], self.times[w:], strict=False)
            ],
            "peakMemoryBytes": self.peak_bytes,
            "rssAfterWarmupBytes": self.rss_at_warmup,
            "paddingShare": self.padding_share,
        }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class CountingCollator:
    """Wraps a Trainer's collator: real (non-padding) and computed input tokens of every batch."""

    def __init__(self, inner: Any, group: int = 1) -> None:
        self.inner = inner
        self.group = group  # micro-batches per optimizer step
        self.batch_tokens: list[int] = []
        self.batch_positions: list[int] = []  # padding included

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        mask = batch.get("attention_mask")
        self.batch_positions.append(int(batch["input_ids"].numel()))
        self.batch_tokens.append(int(mask.sum()) if mask is not None else self.batch_positions[-1])
        return batch

    def _per_step(self, counts: list[int]) -> list[int]:
        g = self.group
        return [sum(counts[i : i + g]) for i in range(0, len(counts) - g + 1, g)]

    @property
    def tokens(self) -> list[int]:
        """Real tokens per optimizer step."""
        return self._per_step(self.batch_tokens)

    @property
    def positions(self) -> list[int]:
        return self._per_step(self.batch_positions)


# ---------------------------------------------------------------------------
# The contenders (each runs in a worker process)


def quantized_base(scale: Scale, model_dir: str) -> Any:
    """The base model as the QLoRA recipe of TRL and transformers' docs loads it."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = torch.bfloat16 if scale.gpu else torch.float32
    return AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        ),
        dtype=compute,
        attn_implementation=scale.attention,
        device_map={"": "cuda:0" if scale.gpu else "cpu"},
    )


def lora_config() -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )


def trainer_arguments(scale: Scale, output: Path, accumulation: int = 1) -> dict[str, Any]:
    """TrainingArguments shared by TRL's and transformers' trainers."""
    return {
        "output_dir": str(output),
        "max_steps": scale.warmup + scale.steps,
        "gradient_accumulation_steps": accumulation,
        "learning_rate": 2e-4,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "optim": "paged_adamw_8bit" if scale.gpu else "adamw_torch",
        "bf16": scale.gpu,
        "use_cpu": not scale.gpu,
        "logging_steps": 1_000_000,
        "save_strategy": "no",
        "report_to": [],
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "seed": SEED,
    }


def run_trl(scale: Scale, inputs: dict[str, Any], workdir: Path, clock: StepClock) -> list[int]:
    import datasets
    from transformers import AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    examples = datasets.Dataset.from_parquet(inputs["examples"])
    examples = examples.map(
        lambda row: {"completion_mask": [int(y != -100) for y in row["labels"]]},
        remove_columns=["labels"],
    )
    config = SFTConfig(
        **trainer_arguments(scale, workdir / "trl"),
        per_device_train_batch_size=scale.batch,
        max_length=scale.seq,
        packing=True,
        packing_strategy="bfd",
        padding_free=True,
        completion_only_loss=True,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    trainer = SFTTrainer(
        model=quantized_base(scale, inputs["model"]),
        args=config,
        train_dataset=examples,
        processing_class=AutoTokenizer.from_pretrained(inputs["model"]),
        peft_config=lora_config(),
    )
    counting = CountingCollator(trainer.data_collator)
    trainer.data_collator = counting
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    clock.padding_share = padding_share(counting, scale)
    return counting.tokens


def run_hf(scale: Scale, inputs: dict[str, Any], workdir: Path, clock: StepClock) -> list[int]:
    import datasets
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    tokenizer = AutoTokenizer.from_pretrained(inputs["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = prepare_model_for_kbit_training(
        quantized_base(scale, inputs["model"]),
        use_gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    model = get_peft_model(model, lora_config())
    examples = datasets.Dataset.from_parquet(inputs["examples"])
    per_step = max(1, round(scale.batch * scale.seq / inputs["meanExampleTokens"]))
    micro = min(per_step, scale.hf_micro_batch)
    accumulation = math.ceil(per_step / micro)
    counting = CountingCollator(
        DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100),
        group=accumulation,
    )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            **trainer_arguments(scale, workdir / "hf", accumulation),
            per_device_train_batch_size=micro,
        ),
        train_dataset=examples,
        data_collator=counting,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    clock.padding_share = padding_share(counting, scale)
    return counting.tokens


def padding_share(counting: CountingCollator, scale: Scale) -> float:
    """Share of the computed positions of the timed steps that were padding."""
    timed = slice(scale.warmup, scale.warmup + scale.steps)
    return 1 - sum(counting.tokens[timed]) / sum(counting.positions[timed])


def run_kubetune(
    scale: Scale, inputs: dict[str, Any], workdir: Path, clock: StepClock
) -> list[int]:
    from kubetune.api.manifest import parse_tuningjob
    from kubetune.trainer.recipe import RunOptions, train

    job = parse_tuningjob(
        job_manifest(
            scale,
            Path(inputs["model"]),
            workdir / "kubetune-output",
            packing=True,
            max_steps=scale.warmup + scale.steps,
        )
    )
    scratch = workdir / "kubetune-scratch"
    train(job, RunOptions(scratch=scratch, metrics_port=None))
    records = [
        json.loads(line)
        for line in (scratch / "metrics.jsonl").read_text().splitlines()
        if line.strip() and json.loads(line).get("kind") == "train"
    ]
    totals = [int(r["tokens_total"]) for r in sorted(records, key=lambda r: r["step"])]
    return [b - a for a, b in zip([0, *totals], totals, strict=False)]


RUNNERS = {"kubetune": run_kubetune, "trl": run_trl, "hf": run_hf}


def worker(contender: str, scale: Scale, inputs: dict[str, Any], out: Path) -> None:
    """One contender in this (fresh) process; writes its figures to `out`."""
    logging.basicConfig(level=logging.WARNING)
    out.write_text(json.dumps(measure(contender, scale, inputs)))


def quiet() -> None:
    """No progress bars, deprecation notices or per-run summaries: the table is the output."""
    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def measure(contender: str, scale: Scale, inputs: dict[str, Any]) -> dict[str, Any]:
    import torch

    quiet()
    with contextlib.suppress(ImportError):  # kubetune's trainer: silences a warning on CPU
        from kubetune.trainer.quantization import quiet_bitsandbytes_import

        quiet_bitsandbytes_import()
    if scale.threads:
        torch.set_num_threads(scale.threads)
    clock = StepClock(scale.warmup, scale.steps, cuda=scale.gpu)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=f"bench-{contender}-") as tmp:
            step_tokens = RUNNERS[contender](scale, inputs, Path(tmp), clock)
    finally:
        clock.handle.remove()
    result = clock.result(step_tokens)
    result["wallSeconds"] = time.perf_counter() - started
    result["torchThreads"] = torch.get_num_threads()
    return result


# ---------------------------------------------------------------------------
# The harness


def matmul_ceiling(gpu: bool, seconds: float = 3.0) -> float:
    """FLOP/s of a dense square matmul in the compute dtype: what this machine attains now."""
    import torch

    n = 4096 if gpu else 1024
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if gpu:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n**3 / best


def run_worker(
    contender: str, scale: Scale, inputs: dict[str, Any], workdir: Path, timeout: float
) -> dict[str, Any]:
    """`measure` in a new process: a clean peak-memory figure and no state shared with others."""
    out = workdir / f"result-{contender}.json"
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "bench.train_step",
        "--worker",
        contender,
        "--worker-scale",
        json.dumps(asdict(scale)),
        "--worker-inputs",
        json.dumps(inputs),
        "--worker-out",
        str(out),
    ]
    # Compiled bytecode kept between workers (where PYTHONDONTWRITEBYTECODE is set, each
    # worker would compile every module it imports again).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )

    if done.returncode != 0:
        raise RuntimeError(f"{contender} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def run(
    scale: Scale, contenders: list[str], workdir: Path, timeout: float, *, in_process: bool
) -> dict[str, Any]:
    """`in_process`: every contender in this process, one after the other (the smoke mode:
    it checks that each side runs, in seconds; its memory figures mean little)."""
    inputs = build_inputs(scale, workdir)
    print(
        f"# {scale.name}: Llama {parameter_counts(scale, LORA['r'])['total'] / 1e6:.1f}M parameters, "
        f"{inputs['exampleCount']} examples ({inputs['tokens']:,} tokens, "
        f"{inputs['meanExampleTokens']:.0f} per example on average), seq {scale.seq}",
        flush=True,
    )
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    for round_ in range(scale.rounds):
        shift = round_ % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            if in_process:
                result = measure(contender, scale, inputs)
            else:
                result = run_worker(contender, scale, inputs, workdir, timeout)
            result["loadAverage"] = [round(x, 2) for x in os.getloadavg()]
            runs[contender].append(result)
            print(
                f"  round {round_ + 1} {contender}: {result['tokensPerSecond']:.0f} tokens/s, "
                f"peak {result['peakMemoryBytes'] / 2**20:.0f} MiB, load {result['loadAverage'][0]}",
                flush=True,
            )
    import torch

    if scale.threads:
        torch.set_num_threads(scale.threads)  # the workers' setting
    ceiling = matmul_ceiling(scale.gpu)
    return summarize(scale, inputs, runs, ceiling)


def summarize(
    scale: Scale, inputs: dict[str, Any], runs: dict[str, list[dict[str, Any]]], ceiling: float
) -> dict[str, Any]:
    import torch

    per_token = flops_per_token(scale, LORA["r"], inputs["attendedPositions"])
    peak = (
        gpu_peak(torch.cuda.get_device_name(0)) if scale.gpu and torch.cuda.is_available() else None
    )
    contenders: dict[str, Any] = {}
    for name, results in runs.items():
        # Best of the rounds: other work on a shared machine only ever slows a run down,
        # so the fastest round is the closest to what the code itself costs. Medians too.
        rates = [r["tokensPerSecond"] for r in results]
        cpu_rates = [r["tokensPerCpuSecond"] or 0.0 for r in results]
        memory = statistics.median(r["peakMemoryBytes"] for r in results)
        achieved = per_token * max(rates)
        contenders[name] = {
            "label": LABELS[name],
            "tokensPerSecond": round(max(rates), 1),
            "tokensPerSecondMedian": round(statistics.median(rates), 1),
            "tokensPerSecondRuns": [round(x, 1) for x in rates],
            "tokensPerCpuSecond": round(max(cpu_rates), 1),
            "tokensPerCpuSecondMedian": round(statistics.median(cpu_rates), 1),
            "peakMemoryMiB": round(memory / 2**20, 1),
            "achievedTflops": round(achieved / 1e12, 4),
            "fractionOfMatmulCeiling": round(achieved / ceiling, 4),
            "mfu": round(achieved / peak, 4) if peak else None,
            "paddingShare": (
                round(statistics.median(r["paddingShare"] for r in results), 4)
                if results[0]["paddingShare"] is not None
                else None
            ),
            "runs": results,
        }
    ratios = {}
    ours = contenders.get("kubetune")
    for other in ("trl", "hf"):
        theirs = contenders.get(other)
        if ours is None or theirs is None:
            continue
        key = f"kubetuneTo{other.upper()}"
        for figure in (
            "tokensPerSecond",
            "tokensPerSecondMedian",
            "tokensPerCpuSecond",
            "tokensPerCpuSecondMedian",
        ):
            ratios[key + figure[0].upper() + figure[1:]] = round(ours[figure] / theirs[figure], 3)
        ratios[key + "PeakMemory"] = round(ours["peakMemoryMiB"] / theirs["peakMemoryMiB"], 3)
    counts = parameter_counts(scale, LORA["r"])
    return {
        "scale": asdict(scale),
        "data": {k: v for k, v in inputs.items() if k not in ("model", "examples")},
        "parameters": counts,
        "flopsPerToken": per_token,
        "flopsFormula": "4*N_base + 6*N_lora + 12*L*hidden*c",
        "matmulCeilingTflops": round(ceiling / 1e12, 4),
        "peakTflops": peak / 1e12 if peak else None,
        "contenders": contenders,
        "ratios": ratios,
    }


def table(summary: dict[str, Any]) -> str:
    gpu = summary["peakTflops"] is not None
    ours = summary["contenders"].get("kubetune")
    rows = []
    for c in summary["contenders"].values():
        row = [
            c["label"],
            f"{c['tokensPerSecond']:,.0f} ({c['tokensPerSecondMedian']:,.0f})",
            f"{ours['tokensPerSecond'] / c['tokensPerSecond']:.2f}x" if ours else "-",
        ]
        if not gpu:
            row += [
                f"{c['tokensPerCpuSecond']:,.0f} ({c['tokensPerCpuSecondMedian']:,.0f})",
                f"{ours['tokensPerCpuSecond'] / c['tokensPerCpuSecond']:.2f}x" if ours else "-",
            ]
        padding = c["paddingShare"]
        row += [
            f"{c['peakMemoryMiB']:,.0f}",
            "-" if padding is None else f"{padding:.0%}",
            f"{c['achievedTflops'] * 1e3:,.1f}",
            f"{c['mfu']:.1%}" if gpu else f"{c['fractionOfMatmulCeiling']:.1%}",
        ]
        rows.append(row)
    headers = ["contender", "tokens/s, best (median)", "kubetune is"]
    if not gpu:
        headers += ["tokens per CPU-second, best (median)", "kubetune is"]
    headers += [
        "peak GPU memory allocated (MiB)" if gpu else "peak RSS (MiB)",
        "padding",
        "model GFLOP/s (best)",
        "MFU" if gpu else "of a measured fp32 matmul",
    ]
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=[s for s in SCALES if s != "smoke"], default="tiny")
    parser.add_argument(
        "--smoke", action="store_true", help="the smallest model, 3 steps, one round"
    )
    parser.add_argument("--rounds", type=int, help="override the scale's rounds")
    parser.add_argument(
        "--threads", type=int, help="override the scale's torch threads (0: torch's default)"
    )
    parser.add_argument(
        "--attention", help="TRL's and HF Trainer's attn_implementation (default: sdpa)"
    )
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument(
        "--workdir", type=Path, help="keep the model and data here (default: a temporary folder)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
    parser.add_argument(
        "--json", type=Path, help="the JSON report (default bench/results/train-step-SCALE.json)"
    )
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-scale", help=argparse.SUPPRESS)
    parser.add_argument("--worker-inputs", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(
            args.worker,
            Scale(**json.loads(args.worker_scale)),
            json.loads(args.worker_inputs),
            args.worker_out,
        )
        return

    scale = SCALES["smoke" if args.smoke else args.scale]
    if args.rounds:
        scale = replace(scale, rounds=args.rounds)
    if args.threads is not None:
        scale = replace(scale, threads=args.threads)
    if args.attention:
        scale = replace(scale, attention=args.attention)
    report = Report("train_step", smoke=args.smoke, settings={"scale": asdict(scale), "lora": LORA})
    print(report.header())
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="kubetune-bench-train-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        summary = run(scale, args.contenders, workdir, args.timeout, in_process=args.smoke)
    print(table(summary))
    if summary["ratios"]:
        print("ratios: " + ", ".join(f"{k} {v}" for k, v in summary["ratios"].items()))
    default = None if args.smoke else RESULTS / f"train-step-{scale.name}.json"
    report.finish(summary, args.json or default)


if __name__ == "__main__":
    main()
