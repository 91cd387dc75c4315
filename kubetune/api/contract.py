"""The contract between the operator and the trainer, in one place.

The operator builds a pod that runs `kubetune train`; these are the things both sides
must agree on: how the spec reaches the pod, what the exit codes mean, what the
termination message holds, where metrics are served, and how results are laid out
under `spec.output.destination`. Nothing here imports torch or kopf.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

# How the operator hands the spec to the pod: the whole TuningJob manifest as JSON in
# this environment variable, read by `kubetune train --from-env`. No credentials are in
# it; those come from a Secret through the AWS_* variables.
SPEC_ENV = "KUBETUNE_TUNINGJOB"

# The Validating step: the operator first runs `kubetune prepare --from-env` in a small
# CPU pod, which checks, formats, masks and packs the dataset and publishes the result
# under this URI (PREPARED_DIR of spec.output.destination), one folder per cache key of
# the pipeline. The GPU pod gets the same variable: its trainer takes the published
# data for its cache key instead of preparing again. Unset (`kubetune train -f`): the
# trainer prepares the data itself.
PREPARED_ENV = "KUBETUNE_PREPARED"

# The pod's scratch volume (an emptyDir): downloaded model, data cache, local
# checkpoints. Unset when running `kubetune train` on a workstation: a cache folder is used.
SCRATCH_DIR_ENV = "KUBETUNE_SCRATCH_DIR"

# A model at pvc://CLAIM/PATH (kubetune.api.locations): the operator mounts the
# PersistentVolumeClaim CLAIM read-only at PVC_MOUNT_ROOT/CLAIM, so the trainer reads
# PVC_MOUNT_ROOT/CLAIM/PATH.
PVC_MOUNT_ROOT = "/mnt/pvc"


# spec.s3.caBundle: the operator mounts the ConfigMap key here and points AWS_CA_BUNDLE
# (which boto3 honours for every TLS connection it opens) at the file.
CA_BUNDLE_DIR = "/etc/kubetune/s3-ca"
CA_BUNDLE_FILE = "ca.crt"
CA_BUNDLE_ENV = "AWS_CA_BUNDLE"

# spec.model.accessSecret: the Secret key the operator passes as HF_TOKEN, the variable
# huggingface_hub reads for gated and private repositories.
HF_TOKEN_KEY = "HF_TOKEN"

# The trainer's Prometheus endpoint: a container port with this name and number.
METRICS_PORT_NAME = "metrics"
METRICS_PORT = 9400

TERMINATION_LOG = "/dev/termination-log"
# Overrides TERMINATION_LOG where there is no container runtime to provide that file
# (the test ground's local node). Outside a container and without this variable, the
# trainer writes no termination message.
TERMINATION_LOG_ENV = "KUBETUNE_TERMINATION_LOG"
# Kubernetes truncates termination messages beyond 4096 bytes.
TERMINATION_MESSAGE_LIMIT = 4096


class ExitCode(enum.IntEnum):
    """What the trainer's exit status means; the Job's podFailurePolicy maps these.

    Values follow sysexits.h where one fits, so they do not collide with Python's 1
    (uncaught exception), click's 2 (usage) or 128+N (killed by signal N).
    """

    OK = 0
    # Anything unexpected (a bug, out of memory, a node problem): retried up to
    # runtime.backoffLimit.
    FAILED = 1
    # Bad data (EX_DATAERR): unreadable records, nothing left to train on. Permanent.
    BAD_DATA = 65
    # Storage missing or denied (EX_NOPERM): no such bucket or key, wrong credentials,
    # output not writable. Permanent until someone fixes access.
    STORAGE_ACCESS = 77
    # The spec cannot work (EX_CONFIG): impossible combination, model without
    # weights, tokenizer without a pad token or template. Permanent.
    INVALID_CONFIG = 78
    # Stopped by SIGTERM after saving a checkpoint (EX_TEMPFAIL): preemption,
    # suspend or node drain. Retrying resumes from the checkpoint; not a failure.
    PREEMPTED = 75

    @property
    def permanent(self) -> bool:
        return self in PERMANENT_EXIT_CODES

    @property
    def reason(self) -> str:
        """The TuningJob status reason for a pod that exited with this code."""
        return _REASONS[self]


PERMANENT_EXIT_CODES = frozenset(
    {ExitCode.BAD_DATA, ExitCode.STORAGE_ACCESS, ExitCode.INVALID_CONFIG}
)

_REASONS = {
    ExitCode.OK: "Succeeded",
    ExitCode.FAILED: "TrainerError",
    ExitCode.BAD_DATA: "BadData",
    ExitCode.STORAGE_ACCESS: "StorageAccess",
    ExitCode.INVALID_CONFIG: "InvalidSpec",
    ExitCode.PREEMPTED: "Preempted",
}


@dataclass(frozen=True)
class TerminationMessage:
    """What the trainer writes to /dev/termination-log as one JSON object.

    On success `adapter` is the adapter's URI and `metrics` the final figures; on
    failure `reason` and `message` say what went wrong in words a user can act on.
    """

    reason: str
    message: str = ""
    adapter: str | None = None
    checkpoint: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        body = {k: v for k, v in asdict(self).items() if v not in (None, "", {})}
        text = json.dumps(body, separators=(",", ":"), sort_keys=True)
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        # Too long: keep the machine-readable parts, shorten the message.
        budget = TERMINATION_MESSAGE_LIMIT - len(json.dumps({**body, "message": ""}).encode()) - 16
        body["message"] = self.message.encode()[: max(budget, 0)].decode(errors="ignore") + "…"
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> TerminationMessage | None:
        """Parse a termination message; None when absent or not ours (e.g. a crash trace)."""
        if not text:
            return None
        try:
            body: Any = json.loads(text)
        except ValueError:
            return None
        if not isinstance(body, dict) or "reason" not in body:
            return None
        known = {
            k: body[k]
            for k in ("reason", "message", "adapter", "checkpoint", "metrics")
            if k in body
        }
        return cls(**known)


class OutputLayout:
    """Paths under spec.output.destination (docs/trainer.md, "Outputs")."""

    ADAPTER = "adapter/"
    # method.type full: the whole trained model (safetensors, config, tokenizer); the
    # termination message's `adapter` then names this folder.
    MODEL = "model/"
    # With training.exportBest or earlyStopping: the weights of the best evaluation so far
    # and best.json (step, eval loss), written last.
    BEST = "best/"
    MERGED = "merged/"  # with spec.method.mergeAdapter: the base with the adapter merged in
    CHECKPOINTS = "checkpoints/"
    CHECKPOINT_MARKER = "COMPLETE"  # written last: a checkpoint without it is partial
    METRICS = "metrics.jsonl"
    PREPARE_REPORT = "prepare-report.json"
    PREPARED = "prepared/"  # the Validating step's packed splits, by cache key
    TRAINING_SUMMARY = "training-summary.json"
    # Which run owns the destination (written once, conditionally) and which process
    # writes there now (an expiring lease): see kubetune.trainer.ownership.
    RUN_RECORD = "run.json"
    WRITER_LEASE = "writer-lease.json"

    @staticmethod
    def checkpoint(step: int) -> str:
        return f"checkpoints/step-{step:06d}/"
