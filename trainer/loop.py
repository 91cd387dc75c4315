"""The training loop: micro-batches → token-correct gradients → optimizer steps.

Why our own loop, and not transformers' Trainer or accelerate. What kubetune must
guarantee is exactly what those frameworks keep to themselves:

- the loss normalisation: the sum of per-token losses over the trained tokens of the
  *whole optimizer step, across every micro-batch and every rank*, divided by their
  number. That needs the global count before the first backward of a step (one
  all-reduce of two integers per step). Trainer approximates it with
  `num_items_in_batch` heuristics that have changed between releases;
- the checkpoint layout, its completion marker and S3 upload (contract), resuming at
  an exact data position, and checkpointing on SIGTERM at a step boundary within the
  grace period, then exiting with the contract's exit code; Trainer owns its own
  `checkpoint-N/` layout and signal behaviour;
- the metrics the operator reads, phase by phase.

The loop itself is short (this module), uses plain torch (`DistributedDataParallel`,
`torch.autocast`, `GradScaler`), and every library piece that is hard to get right
stays a library: peft for adapters, bitsandbytes for quantization and the paged 8-bit
optimizer, transformers for models and schedules.

Loss, precisely. Labels follow the Hugging Face convention (aligned with input_ids,
-100 where not trained); token t is predicted from the tokens before it. We shift the
labels once here, and also mask the first token of every packed example (where
position_ids restart at 0) so no example is ever predicted from the previous one,
whatever the data pipeline did. A step's loss is

    sum over micro-batches m, ranks r of  CE_sum(m, r)  /  trained tokens(all m, all r)

DDP averages gradients over ranks, so each rank's backward uses its sum scaled by
world_size / global count. The result does not depend on how the step's examples are
split into micro-batches or ranks (tests check batch 1 x accumulation N against batch
N x accumulation 1, and 2 processes against 1).
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune.api.contract import ExitCode
from kubetune.api.v1alpha1 import TrainingSpec
from kubetune.trainer.batch import IGNORE_INDEX, MODEL_INPUTS, Batch
from kubetune.trainer.distributed import Dist
from kubetune.trainer.errors import TrainerError
from kubetune.trainer.plan import TrainPlan
from kubetune.trainer.sampling import Schedule, epoch_micro_batches
from kubetune.trainer.state import TrainState, capture_rng

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Collate = Callable[[list[dict[str, Any]]], Batch]


class StopRequested(Exception):
    """A stop (SIGTERM) was requested; the partial step has been discarded."""


class StopSignal:
    """Set from a signal handler; read by the loop between micro-batches."""

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""

    def request(self, reason: str) -> None:
        self.requested = True
        self.reason = reason


def shifted_labels(labels: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """Targets aligned with logits: position t is trained to predict labels[t + 1].

    The last position of each row, and every position whose next token starts a new
    packed example (position id 0), predict nothing.
    """
    shifted = labels.new_full(labels.shape, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    if position_ids is not None:
        starts_next = position_ids[:, 1:] == 0
        shifted[:, :-1] = shifted[:, :-1].masked_fill(starts_next, IGNORE_INDEX)
    return shifted


def count_tokens(batch: Batch) -> tuple[int, int]:
    """(trained tokens, input tokens) of a collated batch.

    Trained tokens are counted from the shifted targets the loss uses (the collator's
    `num_trained_tokens` agrees when its labels follow the contract); input tokens
    are the collator's `num_tokens` (padding excluded) when it says so.
    """
    targets = shifted_labels(batch["labels"], batch.get("position_ids"))
    trained = int((targets != IGNORE_INDEX).sum())
    if "num_tokens" in batch:
        return trained, int(batch["num_tokens"])
    mask = batch.get("attention_mask")
    inputs = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
    return trained, inputs


def loss_sum(
    model: Any, batch: Batch, autocast: contextlib.AbstractContextManager[Any]
) -> torch.Tensor:
    """Sum of the cross-entropy over the batch's trained tokens (fp32)."""
    return loss_and_hits(model, batch, autocast)[0]


def loss_and_hits(
    model: Any, batch: Batch, autocast: contextlib.AbstractContextManager[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the cross-entropy over the trained tokens, and how many of them the model's
    most likely next token got exactly right (token accuracy = hits / trained tokens)."""
    import torch.nn.functional as F

    inputs = {k: batch[k] for k in MODEL_INPUTS if batch.get(k) is not None}
    with autocast:
        logits = model(**inputs, use_cache=False).logits
    # Prompt tuning puts its virtual tokens before the inputs: their logits predict nothing.
    logits = logits[:, logits.shape[1] - batch["input_ids"].shape[1] :]
    targets = shifted_labels(batch["labels"], batch.get("position_ids"))
    flat_logits, flat_targets = logits.float().flatten(0, 1), targets.flatten()
    total = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
    trained = flat_targets != IGNORE_INDEX
    hits = (flat_logits.detach().argmax(-1)[trained] == flat_targets[trained]).sum()
    return total, hits


def to_device(batch: Batch, device: torch.device) -> Batch:
    import torch

    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def autocast_for(plan: TrainPlan) -> contextlib.AbstractContextManager[Any]:
    import torch

    from kubetune.trainer.model import torch_dtype

    if plan.compute_dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=plan.device_type, dtype=torch_dtype(plan.compute_dtype))


@dataclass(frozen=True)
class StepReport:
    """One optimizer step, in global figures."""

    step: int
    loss: float  # per trained token
    trained_tokens: int
    input_tokens: int
    grad_norm: float
    learning_rate: float
    seconds: float
    correct_tokens: int = 0  # trained tokens whose most likely prediction was exactly right

    @property
    def token_accuracy(self) -> float:
        return self.correct_tokens / max(self.trained_tokens, 1)


class TrainingDiverged(TrainerError):
    """The loss became non-finite or spiked past the bound: training on would waste the run.

    Permanent (INVALID_CONFIG): a retry resumes exactly and diverges again at the same
    step; what helps is a change to the spec (learning rate, grad-norm clipping, data).
    """

    exit_code = ExitCode.INVALID_CONFIG


# A step's loss counts as a spike above max(lossSpikeFactor x median, median + SPIKE_MARGIN)
# of the previous SPIKE_WINDOW steps' losses, checked from step SPIKE_WARMUP on. The
# margin (in nats) keeps the near-zero losses of a memorised small dataset from counting.
SPIKE_WINDOW = 20
SPIKE_WARMUP = 10
SPIKE_MARGIN = 2.0


class TrainLoop:
    """Runs optimizer steps from `progress` to `total_steps` over the training split."""

    def __init__(
        self,
        *,
        model: Any,  # the PeftModel, or DDP around it
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: Any | None,
        plan: TrainPlan,
        training: TrainingSpec,
        train_split: Sequence[dict[str, Any]],
        collate: Collate,
        schedule: Schedule,
        total_steps: int,
        dist: Dist,
        device: torch.device,
        stop: StopSignal,
        progress: TrainState,
        lengths: Sequence[int] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.plan = plan
        self.training = training
        self.train_split = train_split
        self.collate = collate
        self.schedule = schedule
        self.total_steps = total_steps
        self.dist = dist
        self.device = device
        self.stop = stop
        self.progress = progress
        self.lengths = lengths
        self.autocast = autocast_for(plan)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        # RNG states at the last step boundary: what a checkpoint taken on a stop saves.
        self.boundary_rng: dict[str, Any] = capture_rng()
        self.recent_losses: deque[float] = deque(maxlen=SPIKE_WINDOW)  # for the spike bound

    def steps(self) -> Iterator[StepReport]:
        """Train step by step, yielding after each; raises StopRequested on a stop."""
        schedule, progress = self.schedule, self.progress
        examples_per_micro_batch = schedule.batch_size * schedule.world_size
        while progress.step < self.total_steps:
            batches = epoch_micro_batches(
                schedule, self.dist.rank, progress.epoch, self.training.seed, self.lengths
            )
            position = progress.examples_into_epoch // examples_per_micro_batch
            while position < len(batches) and progress.step < self.total_steps:
                self.boundary_rng = capture_rng()
                if self._stop_now():
                    raise StopRequested(self.stop.reason)
                step_in_epoch = position // schedule.gradient_accumulation
                count = schedule.step_micro_batches(step_in_epoch)
                group = [
                    self.collate([self.train_split[i] for i in ids])
                    for ids in batches[position : position + count]
                ]
                report = self._step(group)
                position += count
                progress.step += 1
                progress.examples_into_epoch = position * examples_per_micro_batch
                progress.tokens_total += report.input_tokens
                progress.trained_tokens_total += report.trained_tokens
                progress.train_seconds += report.seconds
                yield report
            if position >= len(batches):
                progress.epoch += 1
                progress.examples_into_epoch = 0

    def epochs_done(self) -> float:
        """Fractional epochs at the current step (for metrics)."""
        return self.progress.step / self.schedule.steps_per_epoch

    # -- one step ---------------------------------------------------------------------

    def _step(self, micro_batches: list[Batch]) -> StepReport:
        import torch

        started = time.perf_counter()
        counts = torch.tensor([0, 0], dtype=torch.int64)
        for batch in micro_batches:
            trained, inputs = count_tokens(batch)
            counts += torch.tensor([trained, inputs])
        counts = self.dist.sum(counts.to(self.device)).cpu()
        global_trained, global_inputs = int(counts[0]), int(counts[1])
        # Every rank scales by world_size / global count; DDP's averaging divides by
        # world_size again: each token weighs 1 / global count.
        scale = self.dist.world_size / max(global_trained, 1)

        step_sum = torch.zeros(2, device=self.device)  # loss sum, correct predictions
        self.model.train()
        for index, batch in enumerate(micro_batches):
            batch = to_device(batch, self.device)
            last = index == len(micro_batches) - 1
            sync = (
                contextlib.nullcontext() if last or not self.dist.active else self.model.no_sync()
            )
            with sync:
                total, hits = loss_and_hits(self.model, batch, self.autocast)
                loss = total * scale
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            step_sum += torch.stack([total.detach(), hits.float()])
            if not last and self._stop_now():
                self.optimizer.zero_grad(set_to_none=True)
                raise StopRequested(self.stop.reason)

        global_sum = self.dist.sum(step_sum).cpu()
        step_loss = float(global_sum[0]) / max(global_trained, 1)
        # Before the update: a diverged step must not reach the weights (or a checkpoint).
        self._check_divergence(step_loss)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.training.max_grad_norm)
        learning_rate = self.scheduler.get_last_lr()[0]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

        self.recent_losses.append(step_loss)
        return StepReport(
            step=self.progress.step + 1,
            loss=step_loss,
            trained_tokens=global_trained,
            input_tokens=global_inputs,
            grad_norm=float(grad_norm),
            learning_rate=learning_rate,
            seconds=time.perf_counter() - started,
            correct_tokens=int(global_sum[1]),
        )

    def _check_divergence(self, loss: float) -> None:
        """Raise TrainingDiverged for a non-finite loss or one past the spike bound.

        Every rank sees the same global loss, so all of them stop at the same step.
        """
        step = self.progress.step + 1
        advice = (
            "lower training.learningRate (or training.maxGradNorm), and check the data near "
            "this step; the last checkpoint holds the weights from before"
        )
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"training diverged at step {step} of {self.total_steps}: the loss is {loss} "
                f"(last finite step losses: {_fmt_losses(self.recent_losses)}); {advice}"
            )
        factor = self.training.loss_spike_factor
        if factor is None or step < SPIKE_WARMUP or len(self.recent_losses) < SPIKE_WARMUP - 1:
            return
        median = statistics.median(self.recent_losses)
        bound = max(factor * median, median + SPIKE_MARGIN)
        if loss > bound:
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"training diverged at step {step} of {self.total_steps}: the loss spiked to "
                f"{loss:.4g}, above the bound {bound:.4g} (training.lossSpikeFactor {factor:g} x "
                f"the median {median:.4g} of the previous {len(self.recent_losses)} steps, and at "
                f"least {SPIKE_MARGIN:g} above it); {advice}; or raise lossSpikeFactor (null: off)"
            )

    def _stop_now(self) -> bool:
        # Every rank must take the same decision, or the others would wait forever in
        # the next collective.
        return self.dist.any(self.stop.requested, self.device)


def _fmt_losses(losses: Sequence[float]) -> str:
    return ", ".join(f"{loss:.4g}" for loss in list(losses)[-5:]) or "none yet"
