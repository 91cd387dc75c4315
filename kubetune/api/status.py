"""The TuningJob status, version v1alpha1: what the operator reports, as an API.

The status is written only by the operator and read by people (`kubectl get
tuningjobs`, `kubectl describe`), dashboards and automation. It follows the Kubernetes
API conventions: a `phase` for humans and printer columns, and `conditions` (type,
status, reason, message, observedGeneration, lastTransitionTime) for machines. The
CRD's status schema is generated from these models, like the spec's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from kubetune.api.v1alpha1 import SHORT, URI

Phase = Literal["Pending", "Validating", "Queued", "Running", "Succeeded", "Failed", "Suspended"]
TERMINAL_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed"})

ConditionType = Literal["Suspended", "Running", "Succeeded", "Failed"]
ConditionStatus = Literal["True", "False", "Unknown"]

DATE_TIME: JsonDict = {"format": "date-time"}
MESSAGE = 32768  # a condition message, as in metav1.Condition
REASON = 1024


class StatusModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class Condition(StatusModel):
    """One aspect of the TuningJob's state (metav1.Condition)."""

    type: ConditionType = Field(
        description=(
            "Suspended: the Job is held (by spec.suspend or by a queue). Running: a trainer pod "
            "is running. Succeeded / Failed: the run has ended (present only once it has)."
        )
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=REASON, description="A CamelCase word saying why the condition has its status."
    )
    message: str = Field(
        max_length=MESSAGE, description="What happened, in words a person can act on."
    )
    last_transition_time: str = Field(
        description="When the status last changed (RFC 3339).", json_schema_extra=DATE_TIME
    )
    observed_generation: int = Field(
        ge=0,
        description="The metadata.generation of the TuningJob this condition was computed from.",
    )


class Progress(StatusModel):
    """Training progress, read from the trainer's metrics endpoint while it runs."""

    step: int | None = Field(default=None, ge=0, description="Optimizer steps completed.")
    total_steps: int | None = Field(
        default=None, ge=0, description="Optimizer steps the run will take in all."
    )
    # Fractional figures are decimal strings, as the API conventions ask (no floats in APIs).
    epoch: str | None = Field(
        default=None,
        max_length=32,
        description="Passes over the training split completed, e.g. '1.25'.",
    )
    loss: str | None = Field(
        default=None, max_length=32, description="Latest training loss, e.g. '1.873'."
    )
    eval_loss: str | None = Field(
        default=None, max_length=32, description="Latest validation loss."
    )
    tokens_per_second: int | None = Field(
        default=None, ge=0, description="Training throughput, in tokens per second."
    )
    percent: int | None = Field(
        default=None, ge=0, le=100, description="step / totalSteps, in percent."
    )
    summary: str | None = Field(
        default=None,
        max_length=64,
        description="step/totalSteps and percent, for display, e.g. '120/600 (20%)'.",
    )
    eta: str | None = Field(
        default=None,
        max_length=32,
        description="Estimated time to the end of training at the recent pace, e.g. '12m30s'.",
    )
    update_time: str | None = Field(
        default=None,
        description="When the trainer's metrics were last read (RFC 3339).",
        json_schema_extra=DATE_TIME,
    )


class Output(StatusModel):
    """Where the results are in object storage."""

    adapter: str | None = Field(
        default=None,
        max_length=URI,
        description=(
            "The trained adapter, once the run has succeeded (for method.type full: the folder "
            "of the whole trained model)."
        ),
    )
    checkpoint: str | None = Field(
        default=None,
        max_length=URI,
        description="The latest complete checkpoint the trainer reported.",
    )


class Chosen(StatusModel):
    """Values the trainer chose for settings left at auto (spec.training), when it succeeded."""

    epochs: str | None = Field(
        default=None, max_length=32, description="Epochs chosen for epochs: auto, e.g. '6'."
    )
    learning_rate: str | None = Field(
        default=None,
        max_length=32,
        description="Learning rate chosen for learningRate: auto, e.g. '0.0002'.",
    )
    batch_size: int | None = Field(
        default=None, ge=1, description="Micro-batch size chosen for batchSize: auto."
    )
    gradient_accumulation: int | None = Field(
        default=None, ge=1, description="Accumulation chosen for gradientAccumulation: auto."
    )


class TuningJobStatus(StatusModel):
    """The observed state of a TuningJob."""

    phase: Phase | None = Field(
        default=None,
        description=(
            "Pending (waiting to be scheduled or started), Queued (held by a Kueue queue), Running, "
            "Succeeded, Failed or Suspended (by spec.suspend). Succeeded and Failed are final."
        ),
    )
    reason: str | None = Field(
        default=None,
        max_length=REASON,
        description="A CamelCase word saying why the TuningJob is in its phase.",
    )
    message: str | None = Field(
        default=None,
        max_length=MESSAGE,
        description="Why the TuningJob is in its phase, in words a person can act on.",
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation of the spec the operator last acted on.",
    )
    job_name: str | None = Field(
        default=None,
        max_length=SHORT,
        description=(
            "The batch/v1 Job running this TuningJob. Once set, the spec can no longer change "
            "except spec.suspend."
        ),
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=8,
        description="The latest observations of the TuningJob's state, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    start_time: str | None = Field(
        default=None,
        description="When the first trainer pod started running (RFC 3339).",
        json_schema_extra=DATE_TIME,
    )
    completion_time: str | None = Field(
        default=None,
        description="When the run succeeded or failed (RFC 3339).",
        json_schema_extra=DATE_TIME,
    )
    restarts: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Trainer pods of the current Job that failed or were preempted, as the operator "
            "saw them; a lower bound if a pod ended and was removed while no operator ran."
        ),
    )
    progress: Progress | None = Field(
        default=None, description="Training progress; absent until the trainer reports it."
    )
    output: Output | None = Field(
        default=None, description="Where the adapter and checkpoints are."
    )
    chosen: Chosen | None = Field(
        default=None,
        description=(
            "What the trainer chose for spec.training settings left at auto (from the data; "
            "the rules are in the fields' descriptions), reported when the run succeeded."
        ),
    )

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def to_dict(self) -> dict:
        """The status as the API stores it: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
