"""The operator's settings: one typed object, read from the environment at start-up.

Every setting is an environment variable `KUBETUNE_OPERATOR_<NAME>` (the Helm chart
sets them from its values). Lists are comma-separated; maps and tolerations are JSON.
`load_settings()` fails fast, naming the variable, on a bad value or an unknown
`KUBETUNE_OPERATOR_*` variable (a typo would otherwise be ignored in silence).
docs/operator.md lists them all; tests/unit/test_operator_settings.py checks that the
list there matches this class.

The defaults here are also what `kubetune render` uses, so a rendered Job matches what
an operator with the same environment creates.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import pydantic_settings
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kubetune import __version__
from kubetune.api.contract import ExitCode
from kubetune.api.v1alpha1 import EnvVar, PodAnnotations, PodLabels, Quantity, Toleration

ENV_PREFIX = "KUBETUNE_OPERATOR_"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

CommaList = Annotated[list[str], NoDecode]

# Settings renamed so that no name holds a word that security linters take for a
# credential in the environment (kube-linter env-var-secret, polaris
# sensitiveContainerEnvVar): they hold names of Secrets, never their values. An old
# name fails at start-up with the new one (v1alpha1: no silent aliases).
RENAMED = {
    ENV_PREFIX + "S3_CREDENTIALS_SECRET": ENV_PREFIX + "S3_AUTH_REF",
    ENV_PREFIX + "IMAGE_PULL_SECRETS": ENV_PREFIX + "IMAGE_PULL_AUTH_REFS",
}


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the environment variable."""

    exit_code = ExitCode.INVALID_CONFIG


class Settings(BaseSettings):
    """Operator settings (environment variables KUBETUNE_OPERATOR_<NAME>)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # --- What the operator watches -------------------------------------------------
    namespaces: CommaList = Field(
        default_factory=list,
        description="Namespaces whose TuningJobs the operator handles, comma-separated. Empty: every namespace.",
    )

    # --- The training pod ----------------------------------------------------------
    trainer_image: str = Field(
        default=f"ghcr.io/kubetune/trainer:{__version__}",
        min_length=1,
        description="Trainer image for TuningJobs that set no spec.runtime.image.",
    )
    trainer_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None,
        description="Pull policy for TuningJobs that set none. Unset: the Kubernetes default.",
    )
    image_pull_auth_refs: CommaList = Field(
        default_factory=list,
        description="Names of the Secrets (in each TuningJob's namespace) for pulling the trainer image (the pod's imagePullSecrets), comma-separated.",
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        min_length=1,
        description="The extended resource that counts GPUs (e.g. amd.com/gpu, or a MIG profile such as nvidia.com/mig-3g.40gb).",
    )
    gpu_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description='Node labels every GPU training pod requires, as JSON (e.g. {"node-pool": "gpu"}); spec.scheduling.nodeSelector adds to it.',
    )
    gpu_tolerations: list[Toleration] = Field(
        default_factory=lambda: [
            Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        ],
        description="Tolerations of every GPU training pod, as JSON (the GPU pool's taints); spec.scheduling.tolerations adds to them.",
    )
    default_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description='Node labels every training pod requires, GPU or not, as JSON (e.g. {"team": "ml"}); spec.scheduling.nodeSelector adds to them and wins on the same key.',
    )
    default_tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Tolerations of every training pod, GPU or not, as JSON; spec.scheduling.tolerations adds to them.",
    )
    default_env: list[EnvVar] = Field(
        default_factory=list,
        description=(
            'Environment of every training pod, as JSON in the shape of spec.runtime.env (e.g. [{"name": '
            '"HTTPS_PROXY", "value": "http://proxy:3128"}]); a TuningJob\'s own entry of the same name wins.'
        ),
    )
    default_pod_labels: PodLabels = Field(
        default_factory=dict,
        description="Labels of every training pod, as JSON; spec.runtime.podLabels wins on the same key.",
    )
    default_pod_annotations: PodAnnotations = Field(
        default_factory=dict,
        description="Annotations of every training pod, as JSON; spec.runtime.podAnnotations wins on the same key.",
    )
    pod_scrape_annotations: bool = Field(
        default=False,
        description=(
            "Put prometheus.io/scrape, prometheus.io/port and prometheus.io/path on training pods, for "
            "Prometheus set up without the Prometheus Operator (annotation-based discovery)."
        ),
    )
    default_cpu: Quantity = Field(
        default="8", description="CPU request and limit when spec.resources.cpu is unset."
    )
    default_memory: Quantity = Field(
        default="64Gi", description="Memory request and limit when spec.resources.memory is unset."
    )
    default_ephemeral_storage: Quantity = Field(
        default="100Gi",
        description="Ephemeral-storage request when spec.resources.ephemeralStorage is unset.",
    )
    default_scratch_size: Quantity = Field(
        default="100Gi",
        description="Size limit of the scratch volume when spec.resources.scratchSize is unset.",
    )
    default_shm_size: Quantity = Field(
        default="8Gi", description="Size of /dev/shm when spec.resources.shmSize is unset."
    )
    run_as_user: int = Field(
        default=1000,
        ge=1,
        description="UID the trainer runs as (non-root, as the restricted Pod Security Standard requires).",
    )
    run_as_group: int = Field(default=1000, ge=0, description="GID the trainer runs as.")
    fs_group: int = Field(default=1000, ge=0, description="Group that owns the pod's volumes.")
    termination_grace_period_seconds: int = Field(
        default=120,
        ge=1,
        description="Time a trainer gets after SIGTERM (suspend, preemption, drain) to save a checkpoint and exit.",
    )

    # --- The Validating step ----------------------------------------------------------
    validate_data: bool = Field(
        default=True,
        description=(
            "Before each GPU Job, run `kubetune prepare` in a small CPU pod (phase Validating): a bad "
            "dataset fails the TuningJob without a GPU ever being requested, and the GPU pod reads "
            "the prepared data instead of preparing it again."
        ),
    )
    validate_cpu: Quantity = Field(
        default="2", description="CPU request and limit of the Validating step's pod."
    )
    validate_memory: Quantity = Field(
        default="8Gi", description="Memory request and limit of the Validating step's pod."
    )
    validate_scratch_size: Quantity = Field(
        default="20Gi",
        description="Scratch volume (dataset download and the prepared data) of the Validating step's pod.",
    )
    validate_deadline_seconds: int = Field(
        default=3600,
        ge=60,
        description="The Validating step fails the TuningJob when it takes longer than this.",
    )

    # --- What TuningJobs may ask for ---------------------------------------------------
    allowed_trainer_images: CommaList = Field(
        default_factory=list,
        description=(
            "Images a TuningJob may name in spec.runtime.image, comma-separated; each may end in * "
            "(e.g. registry.example.com/ml/kubetune-trainer:*). Empty: any image. The operator's own "
            "trainerImage is always allowed."
        ),
    )
    allowed_service_accounts: CommaList = Field(
        default_factory=list,
        description=(
            "ServiceAccounts a TuningJob may name in spec.runtime.serviceAccountName, comma-separated "
            "(* at the end matches any suffix). Empty: any ServiceAccount of the TuningJob's namespace."
        ),
    )

    # --- S3 ------------------------------------------------------------------------
    s3_endpoint: str | None = Field(
        default=None,
        description="S3 endpoint for TuningJobs that set no spec.s3.endpoint. Unset: AWS S3.",
    )
    s3_auth_ref: str | None = Field(
        default=None,
        description=(
            "Name of the Secret (in each TuningJob's namespace) with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for "
            "TuningJobs that set no spec.s3.credentialsSecret. Unset: the pod's own identity."
        ),
    )

    # --- Reconciling ---------------------------------------------------------------
    workers: int = Field(
        default=32,
        ge=1,
        le=256,
        description="TuningJobs reconciled at the same time (each mostly waits on the API server).",
    )
    progress_interval_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How often a running trainer's metrics are read for status.progress.",
    )
    progress_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Timeout of one read of a trainer's metrics endpoint."
    )
    resync_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How often an unfinished TuningJob is reconciled even when nothing changed.",
    )

    # --- Serving -------------------------------------------------------------------
    metrics_port: int = Field(
        default=8080, ge=0, le=65535, description="Port of /metrics (Prometheus). 0 turns it off."
    )
    health_port: int = Field(
        default=8081,
        ge=0,
        le=65535,
        description="Port of /healthz, the liveness and readiness probe. 0 turns it off.",
    )

    # --- High availability ---------------------------------------------------------
    leader_election: bool = Field(
        default=True,
        description="Run only while holding a coordination.k8s.io Lease, so that of several replicas one acts.",
    )
    lease_name: str = Field(
        default="kubetune-operator", min_length=1, description="Name of the leader-election Lease."
    )
    lease_namespace: str | None = Field(
        default=None,
        description="Namespace of the Lease. Unset: the operator pod's own namespace (else default).",
    )
    lease_duration_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How long a leader's Lease lasts without renewal before another replica takes over.",
    )
    lease_renew_deadline_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long the leader keeps trying to renew before it steps down (and exits).",
    )
    lease_retry_seconds: float = Field(
        default=2.0, gt=0, description="How often the Lease is renewed or tried."
    )

    # --- Logging -------------------------------------------------------------------
    log_format: Literal["text", "json"] = Field(
        default="text", description="text for people, json for log collectors."
    )

    @field_validator(
        "namespaces",
        "image_pull_auth_refs",
        "allowed_trainer_images",
        "allowed_service_accounts",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _lease_timing(self) -> Settings:
        if not (
            self.lease_retry_seconds
            < self.lease_renew_deadline_seconds
            < self.lease_duration_seconds
        ):
            raise ValueError(
                "lease timings must satisfy LEASE_RETRY_SECONDS < LEASE_RENEW_DEADLINE_SECONDS < "
                f"LEASE_DURATION_SECONDS (got {self.lease_retry_seconds}, {self.lease_renew_deadline_seconds}, "
                f"{self.lease_duration_seconds})"
            )
        return self

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def resolved_lease_namespace(self) -> str:
        if self.lease_namespace:
            return self.lease_namespace
        try:
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
        except OSError:
            return "default"


def load_settings() -> Settings:
    """Read and check the settings from the environment; SettingsError names each bad variable."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(
        k for k in os.environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known
    )
    renamed = [f"{old} is now {RENAMED[old.upper()]}" for old in unknown if old.upper() in RENAMED]
    if renamed:
        raise SettingsError(f"renamed setting(s): {'; '.join(renamed)}")
    if unknown:
        raise SettingsError(
            f"unknown setting(s) {', '.join(unknown)}; docs/operator.md lists the known ones"
        )
    try:
        return Settings()
    except pydantic_settings.SettingsError as e:  # a value that is not valid JSON
        field = re.search(r'field "(\w+)"', str(e))
        name = ENV_PREFIX + field.group(1).upper() if field else "a setting"
        raise SettingsError(f"invalid operator settings:\n  {name}: not valid JSON") from None
    except ValidationError as e:
        problems = []
        for err in e.errors():
            name = ENV_PREFIX + str(err["loc"][0]).upper() if err["loc"] else "settings"
            message = str(err["msg"]).removeprefix("Value error, ")
            got = (
                f" (got {err['input']!r})"
                if isinstance(err.get("input"), str | int | float)
                else ""
            )
            problems.append(f"{name}: {message}{got}")
        raise SettingsError("invalid operator settings:\n  " + "\n  ".join(problems)) from None
