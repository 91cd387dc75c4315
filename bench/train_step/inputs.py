"""What every contender of the train-step benchmark gets alike: the model folder (a Llama of
the scale with random weights and the Mistral 7B tokenizer), the TuningJob whose settings
they all follow, and the tokenized examples (bench/train_step)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from bench.common import ROOT
from bench.train_step.scales import Scale, llama_config

DOLLY = ROOT / "tests" / "data" / "dolly-sample.jsonl"
SEED = 42
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


def quiet() -> None:
    """No progress bars, deprecation notices or per-run summaries: the table is the output."""
    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
