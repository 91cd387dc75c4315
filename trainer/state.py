"""The loop's counters and random-number states: what a checkpoint must bring back.

Optimizer, scheduler and adapter weights are saved by their owners (torch, peft);
this module holds the rest: where the loop is (step, epoch, position in the epoch),
what it has counted, and the RNG states that make a resumed run draw the same dropout
masks an uninterrupted one would have drawn.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

PROGRESS_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Counters at an optimizer-step boundary (all global: summed over ranks)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch the next step belongs to
    examples_into_epoch: int = 0  # examples (packs) of that epoch already trained on, all ranks
    tokens_total: int = 0  # input tokens trained on
    trained_tokens_total: int = 0  # tokens that contributed to the loss
    train_seconds: float = 0.0  # time spent in training steps (not eval, not checkpoints)
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # every eval result so far

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, folder: Path, extra: dict[str, Any]) -> None:
        body = json.loads(self.to_json())
        body.update(extra)
        (folder / PROGRESS_FILE).write_text(
            json.dumps(body, indent=1, sort_keys=True), encoding="utf-8"
        )

    @classmethod
    def load(cls, folder: Path) -> tuple[TrainState, dict[str, Any]]:
        text = (folder / PROGRESS_FILE).read_text(encoding="utf-8")
        return cls.from_json(text), json.loads(text)


def capture_rng() -> dict[str, Any]:
    """The RNG states this process draws from (Python, torch CPU, the current CUDA device)."""
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    python_state = state["python"]
    # torch.load gives lists back where tuples went in; random.setstate wants tuples.
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
