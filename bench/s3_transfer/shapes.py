"""The shapes the S3 benchmark moves, as the trainer moves them: a model prefix, a dataset
object, a checkpoint folder, in full and smoke sizes (bench/s3_transfer)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class Shape:
    name: str
    direction: str  # "download" | "upload"
    files: dict[str, int]  # relative path -> size in bytes
    single: bool = False  # one object (download_file) rather than a prefix

    @property
    def bytes(self) -> int:
        return sum(self.files.values())


SMALL_MODEL_FILES = {
    "config.json": 700,
    "generation_config.json": 180,
    "model.safetensors.index.json": 24_000,
    "special_tokens_map.json": 300,
    "tokenizer_config.json": 50_000,
}
SMALL_CHECKPOINT_FILES = {
    "adapter_config.json": 900,
    "scheduler.pt": 1_500,
    "rng-rank-00000.pt": 15_000,
    "trainer_state.json": 600,
    "metrics.jsonl": 40_000,
}


def shapes(smoke: bool) -> list[Shape]:
    weights, tokenizer, dataset, adapter, optimizer = (
        (12 * MiB, 1 * MiB, 10 * MiB, 6 * MiB, 3 * MiB)
        if smoke
        else (256 * MiB, 2 * MiB, 100 * MiB, 160 * MiB, 80 * MiB)
    )
    return [
        Shape(
            "model",
            "download",
            {
                "model-00001-of-00002.safetensors": weights,
                "model-00002-of-00002.safetensors": weights,
                "tokenizer.json": tokenizer,
                **SMALL_MODEL_FILES,
            },
        ),
        Shape("dataset", "download", {"train.jsonl": dataset}, single=True),
        Shape(
            "checkpoint",
            "upload",
            {
                "adapter_model.safetensors": adapter,
                "optimizer.pt": optimizer,
                **SMALL_CHECKPOINT_FILES,
            },
        ),
    ]


def write_files(folder: Path, files: dict[str, int]) -> None:
    """Random bytes: nothing on the way can compress them."""
    for name, size in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            left = size
            while left:
                block = min(left, 16 * MiB)
                out.write(os.urandom(block))
                left -= block
