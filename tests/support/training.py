"""Helpers for trainer tests: tiny model folders, synthetic tasks, manifests.

TEMPORARY STAND-INS (until the data branch lands on main): `build_tokenizer`,
`save_tiny_model` and the `standin_*` data functions follow the contract of
`kubetune.trainer.tiny` and `kubetune.trainer.data` (packed rows with input_ids,
labels (-100 = not trained), position_ids, seq_lengths; padding-free collation with
position ids restarting per example). They are replaced by the real modules once
those are on main; nothing here ships.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

IGNORE = -100
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A synthetic instruction task a tiny random model can learn in a few dozen steps:
# the response always has the same shape ("Answer: <animal> is <class>."), and the
# class follows from the animal in the prompt.
ANIMALS = {
    "dog": "mammal",
    "cat": "mammal",
    "whale": "mammal",
    "horse": "mammal",
    "eagle": "bird",
    "sparrow": "bird",
    "owl": "bird",
    "crow": "bird",
}


def synthetic_records(count: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    names = sorted(ANIMALS)
    records = []
    for _ in range(count):
        animal = rng.choice(names)
        records.append(
            {
                "instruction": f"Classify the animal: {animal}",
                "context": "",
                "response": f"Answer: {animal} is a {ANIMALS[animal]}.",
                "category": "classification",
            }
        )
    return records


def build_tokenizer(texts: list[str] | None = None, vocab_size: int = 384) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = texts or [r["instruction"] + " " + r["response"] for r in synthetic_records(64)]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def save_tiny_model(path: Path, arch: str = "llama", *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    tokenizer = build_tokenizer()
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, end_of_turn],
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # Larger than the usual 0.02: a random model with tiny logits barely moves under
        # LoRA alone (eval loss 4.85 → 4.61 in 40 steps), with 0.2 it learns (0.63 → 0.09).
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------
# Stand-in data pipeline (the contract of kubetune.trainer.data)


@dataclass
class StandinPrepared:
    train: list[dict[str, list[int]]]
    validation: list[dict[str, list[int]]] | None
    test: list[dict[str, list[int]]] | None
    report: dict[str, Any] = field(default_factory=dict)
    packing_efficiency: float | None = None


def encode(tokenizer: Any, record: dict[str, str]) -> tuple[list[int], list[int]]:
    prompt = [{"role": "user", "content": record["instruction"]}]
    full = [*prompt, {"role": "assistant", "content": record["response"]}]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    full_ids = tokenizer.apply_chat_template(full, tokenize=True, return_dict=False)
    # Train on the response and its <|im_end|>, not on the trailing newline.
    end = len(full_ids) - 1
    labels = [IGNORE] * len(prompt_ids) + full_ids[len(prompt_ids) : end] + [IGNORE]
    return list(full_ids), labels


def pack(examples: list[tuple[list[int], list[int]]], max_len: int, packing: bool) -> list[dict[str, list[int]]]:
    rows: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": [], "seq_lengths": []}
    for ids, labels in examples:
        ids, labels = ids[:max_len], labels[:max_len]
        if current["input_ids"] and (not packing or len(current["input_ids"]) + len(ids) > max_len):
            rows.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": [], "seq_lengths": []}
        current["input_ids"] += ids
        current["labels"] += labels
        current["position_ids"] += list(range(len(ids)))
        current["seq_lengths"].append(len(ids))
    if current["input_ids"]:
        rows.append(current)
    return rows


def standin_prepare(job: Any, workdir: Path, tokenizer: Any) -> StandinPrepared:
    import json

    spec = job.spec
    lines = Path(spec.dataset.source).read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    if not records:
        from kubetune.trainer.errors import BadDataError

        raise BadDataError(f"{spec.dataset.source}: no records")
    rng = random.Random(spec.training.seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    held = max(1, int(len(records) * (spec.dataset.validation.fraction or 0.1))) if spec.dataset.validation else 0
    validation = [records[i] for i in order[:held]]
    train = [records[i] for i in order[held:]]
    test = None
    if spec.dataset.test and spec.dataset.test.source:
        test = [json.loads(line) for line in Path(spec.dataset.test.source).read_text().splitlines() if line.strip()]
    length, packing = spec.training.max_seq_length, spec.training.packing

    def rows(part: list[dict[str, str]]) -> list[dict[str, list[int]]]:
        return pack([encode(tokenizer, r) for r in part], length, packing)

    train_rows = rows(train)
    efficiency = sum(len(r["input_ids"]) for r in train_rows) / (len(train_rows) * length)
    return StandinPrepared(
        train=train_rows,
        validation=rows(validation) if validation else None,
        test=rows(test) if test else None,
        report={"examples": len(train)},
        packing_efficiency=efficiency,
    )


def standin_collate(rows: list[dict[str, list[int]]], pad_id: int = 0, packing: bool = True) -> dict[str, Any]:
    import torch

    if packing:
        # Padding-free: all rows into one sequence; position ids restart per example.
        flat = {k: [x for r in rows for x in r[k]] for k in ("input_ids", "labels", "position_ids")}
        return {k: torch.tensor([v], dtype=torch.long) for k, v in flat.items()}
    width = max(len(r["input_ids"]) for r in rows)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        "position_ids": torch.zeros((len(rows), width), dtype=torch.long),
    }
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        batch["input_ids"][i, :n] = torch.tensor(r["input_ids"])
        batch["labels"][i, :n] = torch.tensor(r["labels"])
        batch["attention_mask"][i, :n] = 1
        batch["position_ids"][i, :n] = torch.arange(n)
    return batch


def standin_prepare_data(job: Any, workdir: Path, tokenizer: Any, storage: Any) -> Any:
    """Replaces kubetune.trainer.run.prepare_data in tests until the data pipeline lands."""
    from kubetune.trainer.run import PreparedSplits

    prepared = standin_prepare(job, workdir, tokenizer)
    packing = job.spec.training.packing

    def collate(rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        return standin_collate(rows, tokenizer.pad_token_id or 0, packing)

    return PreparedSplits(
        train=prepared.train,
        validation=prepared.validation,
        test=prepared.test,
        collate=collate,
        lengths=None if packing else [len(r["input_ids"]) for r in prepared.train],
        packing_efficiency=prepared.packing_efficiency,
        summary=prepared.report,
    )


# ---------------------------------------------------------------------------
# Manifests


def manifest(model: str, data: str, destination: str, **overrides: Any) -> dict[str, Any]:
    """A TuningJob for a tiny run; `overrides` are deep-merged into spec (camelCase keys)."""
    spec: dict[str, Any] = {
        "model": {"source": model},
        "dataset": {"source": data, "validation": {"fraction": 0.1}},
        "method": {"type": "qlora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "training": {
            "maxSteps": 6,
            "learningRate": 5e-3,
            "batchSize": 2,
            "gradientAccumulation": 2,
            "maxSeqLength": 128,
            "warmupRatio": 0.0,
            "evalEvery": 3,
            "checkpointEvery": 3,
            "logEvery": 1,
            "seed": 7,
        },
        "output": {"destination": destination},
        "resources": {"gpus": 0},
    }
    _merge(spec, overrides)
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "TuningJob", "metadata": {"name": "tiny"}, "spec": spec}


def write_manifest(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def write_records(path: Path, records: list[dict[str, str]]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
