"""The train-step benchmark's contenders, each as it is used: kubetune's `train()`, TRL's
SFTTrainer (packing, padding-free) and transformers' Trainer (padded batches), on the
same model, examples and settings (bench/train_step)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.train_step.clock import CountingCollator, StepClock
from bench.train_step.inputs import LORA, SEED, job_manifest
from bench.train_step.scales import Scale

CONTENDERS = ("kubetune", "trl", "hf")
LABELS = {
    "kubetune": "kubetune (packed, padding-free)",
    "trl": "TRL SFTTrainer (packing, padding_free)",
    "hf": "HF Trainer (padded batches)",
}


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
