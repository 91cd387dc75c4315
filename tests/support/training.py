"""Helpers for trainer tests: a synthetic instruction task, tiny model folders, manifests."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

# A synthetic instruction task a tiny random model learns in a few dozen steps: the
# response always has the same shape ("Answer: <animal> is a <class>."), and the
# class follows from the animal named in the instruction.
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
    """Dolly-format records (instruction, context, response, category) of the task."""
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


def save_tiny_model(
    path: Path, arch: str = "llama", *, hidden: int = 64, layers: int = 2, seed: int = 0
) -> Path:
    """A tiny random model (tests.support.tiny) whose tokenizer knows the task's words.

    init_std 0.2 (not 0.02): see tiny.build_model; with it LoRA alone learns the task.
    """
    from tests.support.tiny import save_tiny

    texts = [r["instruction"] + " " + r["response"] for r in synthetic_records(64)]
    return save_tiny(
        path, arch, texts=texts, hidden_size=hidden, layers=layers, seed=seed, init_std=0.2
    )


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
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "TuningJob",
        "metadata": {"name": "tiny"},
        "spec": spec,
    }


def write_manifest(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def write_records(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
