"""Training that knows when to stop: early stopping on eval loss, and the best weights.

Early stopping reads only the evaluations the run has recorded (`TrainState.evaluations`,
which checkpoints carry), so a resumed run takes the same decision an uninterrupted one
would have taken, with no state of its own. Every rank computes the same global eval
loss, so every rank stops at the same step.

The best weights (`training.exportBest`, or `earlyStopping`) are saved whenever an
evaluation sets a new best: the trainable weights only (the adapter, or the whole
model for type full) to `<output.destination>/best/`, with `best.json` (step, eval
loss) written last, so a pod that restarts still finds them; before export they are
loaded back into the model when the last step is not the best. A run that starts from
step 0 (no checkpoint to resume) removes an old `best/` first: it belongs to another run.

Divergence (a non-finite loss, a loss spike) is checked per step in the loop
(`kubetune.trainer.loop.TrainLoop._check_divergence`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.contract import OutputLayout
from kubetune.api.v1alpha1 import EarlyStoppingSpec
from kubetune.trainer.storage import Storage, join_uri

log = logging.getLogger(__name__)

BEST_MARKER = "best.json"
EVAL_KEY = "eval_loss"


@dataclass(frozen=True)
class Best:
    step: int
    eval_loss: float


def best_evaluation(evaluations: Sequence[dict[str, Any]], min_delta: float = 0.0) -> Best | None:
    """The evaluation with the lowest loss; a later one must beat it by more than min_delta."""
    best: Best | None = None
    for record in evaluations:
        loss = record.get(EVAL_KEY)
        if loss is None:
            continue
        if best is None or loss < best.eval_loss - min_delta:
            best = Best(int(record["step"]), float(loss))
    return best


def early_stop_reason(
    evaluations: Sequence[dict[str, Any]], spec: EarlyStoppingSpec | None
) -> str | None:
    """Why to stop now (patience evaluations in a row without a new best), else None."""
    if spec is None:
        return None
    best = best_evaluation(evaluations, spec.min_delta)
    if best is None:
        return None
    since = [r for r in evaluations if r.get(EVAL_KEY) is not None and r["step"] > best.step]
    if len(since) < spec.patience:
        return None
    return (
        f"early stopping at step {since[-1]['step']}: {len(since)} evaluations without a validation "
        f"loss below the best {best.eval_loss:.4f} (step {best.step}"
        + (f", by more than {spec.min_delta:g}" if spec.min_delta else "")
        + f"; patience {spec.patience})"
    )


class BestWeights:
    """The best evaluation's trainable weights at `<destination>/best/` (rank 0 only)."""

    def __init__(self, storage: Storage, destination: str, scratch: Path) -> None:
        self.storage = storage
        self.uri = join_uri(destination, OutputLayout.BEST)
        self.scratch = scratch / "best"

    def clear(self) -> None:
        """Forget a best from another run (called when training starts from step 0)."""
        for info in sorted(
            self.storage.list_objects(self.uri), key=lambda i: i.relative != BEST_MARKER
        ):
            self.storage.delete(info.uri)

    def saved(self) -> Best | None:
        marker = join_uri(self.uri, BEST_MARKER)
        if not self.storage.exists(marker):
            return None
        body = json.loads(self.storage.read_text(marker))
        return Best(int(body["step"]), float(body[EVAL_KEY]))

    def save(self, model: Any, best: Best) -> None:
        """Write the model's trainable weights as the best (marker first removed, then last)."""
        from kubetune.trainer.model import is_peft_model, save_full_weights

        marker = join_uri(self.uri, BEST_MARKER)
        if self.storage.exists(marker):
            self.storage.delete(marker)  # from here on the old best is incomplete
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)
        if is_peft_model(model):
            model.save_pretrained(str(self.scratch), safe_serialization=True)
            (self.scratch / "README.md").unlink(missing_ok=True)
        else:
            save_full_weights(model, self.scratch)
        self.storage.upload_dir(self.scratch, self.uri)
        body = {"step": best.step, EVAL_KEY: best.eval_loss}
        self.storage.write_text(marker, json.dumps(body, sort_keys=True))
        shutil.rmtree(self.scratch, ignore_errors=True)
        log.info(
            "best weights so far (step %d, eval loss %.4f) saved to %s", *body.values(), self.uri
        )

    def restore(self, model: Any, device: Any) -> Best:
        """Load the saved best weights into `model`; returns which they are."""
        from kubetune.trainer.checkpoint import load_adapter_weights
        from kubetune.trainer.model import is_peft_model, load_full_weights

        best = self.saved()
        if best is None:
            raise FileNotFoundError(f"{self.uri}{BEST_MARKER}: no best weights saved")
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.storage.download_prefix(self.uri, self.scratch)
        if is_peft_model(model):
            load_adapter_weights(model, self.scratch, device)
        else:
            load_full_weights(model, self.scratch, device)
        log.info("exporting the best weights: step %d, eval loss %.4f", best.step, best.eval_loss)
        return best
