"""The trainer's Prometheus metrics: part of the operator↔trainer contract.

The trainer serves them (`kubetune.trainer.telemetry`) on the container port named in
`kubetune.api.contract` (METRICS_PORT_NAME, METRICS_PORT); the operator reads progress
from them (`kubetune.operator.progress`); the chart's dashboard queries them. Only rank
0 serves: it sees global figures (token counts and losses are summed over ranks).

| metric | type | meaning |
|---|---|---|
| kubetune_trainer_phase{phase} | gauge | 1 for the current phase, 0 for the others |
| kubetune_trainer_step | gauge | optimizer steps done |
| kubetune_trainer_total_steps | gauge | optimizer steps planned |
| kubetune_trainer_epoch | gauge | epochs done, fractional (step / steps per epoch) |
| kubetune_trainer_loss | gauge | training loss of the last step (per trained token) |
| kubetune_trainer_eval_loss | gauge | validation loss of the last evaluation |
| kubetune_trainer_learning_rate | gauge | learning rate of the last step |
| kubetune_trainer_grad_norm | gauge | gradient L2 norm of the last step, before clipping |
| kubetune_trainer_tokens_total | counter | input tokens trained on by this process (all ranks) |
| kubetune_trainer_tokens_per_second | gauge | input tokens per second over the last log window |
| kubetune_trainer_gpu_memory_bytes{kind} | gauge | allocated, reserved, peak (rank 0's GPU) |
| kubetune_trainer_packing_efficiency | gauge | share of sequence slots holding real tokens |
| kubetune_trainer_s3_bytes_total{direction} | counter | bytes moved to (upload) and from (download) S3 |

Gauges read 0 until their first value (docs/trainer.md).
"""

from __future__ import annotations

from typing import Literal, get_args

PREFIX = "kubetune_trainer_"

# The trainer's phases, in the order a pod lives through them (the label of
# kubetune_trainer_phase). Not the TuningJob's phase (kubetune.api.status.Phase).
TrainerPhase = Literal[
    "downloading", "preparing", "loading", "training", "evaluating", "checkpointing", "uploading"
]
TRAINER_PHASES: tuple[TrainerPhase, ...] = get_args(TrainerPhase)


class TrainerMetric:
    """The metric names, as registered. A counter is exposed with `_total` appended."""

    PHASE = PREFIX + "phase"
    STEP = PREFIX + "step"
    TOTAL_STEPS = PREFIX + "total_steps"
    EPOCH = PREFIX + "epoch"
    LOSS = PREFIX + "loss"
    EVAL_LOSS = PREFIX + "eval_loss"
    LEARNING_RATE = PREFIX + "learning_rate"
    GRAD_NORM = PREFIX + "grad_norm"
    TOKENS = PREFIX + "tokens"  # counter: kubetune_trainer_tokens_total
    TOKENS_PER_SECOND = PREFIX + "tokens_per_second"
    GPU_MEMORY_BYTES = PREFIX + "gpu_memory_bytes"
    PACKING_EFFICIENCY = PREFIX + "packing_efficiency"
    S3_BYTES = PREFIX + "s3_bytes"  # counter: kubetune_trainer_s3_bytes_total
