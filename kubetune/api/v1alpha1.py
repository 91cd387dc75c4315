"""The TuningJob API, version v1alpha1: one typed model for the spec.

This module is the single configuration language of kubetune. The same model
validates a manifest in `kubetune prepare/train -f`, in the operator before it
creates a Job, and inside the training pod; the CRD's OpenAPI schema in `crds/` is
generated from it (`kubetune crd`). It imports nothing heavier than pydantic so
that the operator image, which carries no torch, can use it.

Conventions:
- Fields are snake_case in Python and camelCase in manifests (`learning_rate` ↔
  `learningRate`); models accept both.
- Every field has a description: it becomes `kubectl explain` text.
- Strings and lists carry length bounds: the API server needs them to bound the
  cost of the CRD's CEL rules, and they catch pasted garbage early.
- Rules that involve several fields live in `model_validator`s and say what to
  change, in the manifest's own field names.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonDict

from kubetune.api.quantity import QUANTITY_HINT, check_positive_quantity

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TuningJob"
PLURAL = "tuningjobs"

# Bounds shared by many fields (see the module docstring).
SHORT = 253  # a DNS subdomain: names, keys, resource names
URI = 2048
TEMPLATE = 32768  # an inline Jinja chat template

ShortString = Annotated[str, Field(max_length=SHORT)]

# Hyperparameters that the trainer can choose from the data ("auto"; rules in
# docs/trainer.md and kubetune/trainer/auto.py). In the CRD an integer-or-auto field is
# int-or-string with a CEL rule; a number-or-auto field (fractions allowed) keeps its
# value as written: structural schemas have no number-or-string type, and the API server
# compiles no CEL on (or about) untyped fields. The operator's validation with this
# model rejects anything else before a Job exists (status InvalidSpec).
AUTO: Literal["auto"] = "auto"


IntOrAuto = Annotated[
    Annotated[int, Field(ge=1, le=4096)] | Literal["auto"],
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == int ? self >= 1 && self <= 4096 : self == 'auto'",
                    "message": "a whole number from 1 to 4096, or auto",
                }
            ],
        }
    ),
]


class ApiModel(BaseModel):
    """Base for every API object: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=False,
    )


# ---------------------------------------------------------------------------
# Model


# A pvc:// path stays inside the claim's mount: no `..` segment. The same rule as
# ModelSpec._source_stays_in_its_claim, for the API server.
_PVC_ESCAPE_RULE: JsonDict = {
    "rule": "!self.startsWith('pvc://') || !self.matches('(^|/)[.][.](/|$)')",
    "message": "a pvc:// path may not contain '..' segments: it must stay inside the claim",
}


class ModelSpec(ApiModel):
    # The same rule as _access_secret_needs_hub, for the API server.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.accessSecret) || self.source.startsWith('hf://')",
                    "message": "accessSecret holds a Hugging Face token and applies only to an hf:// source",
                }
            ]
        }
    )

    source: str = Field(
        min_length=1,
        max_length=URI,
        json_schema_extra={"x-kubernetes-validations": [_PVC_ESCAPE_RULE]},
        description=(
            "Where the base model's weights, config and tokenizer are: s3://bucket/prefix/ "
            "(downloaded to the pod's scratch volume and cached there), pvc://claim/path "
            "(a PersistentVolumeClaim mounted read-only), hf://org/name (the Hugging Face "
            "hub, where the cluster can reach it), or a local path for `kubetune train` on "
            "a workstation. Any causal language model that transformers supports."
        ),
    )
    revision: str | None = Field(
        default=None,
        max_length=SHORT,
        description="For hf:// sources: the branch, tag or commit to use. Ignored elsewhere.",
    )
    access_secret: str | None = Field(
        default=None,
        max_length=SHORT,
        description=(
            "For hf:// sources: name of a Secret in the TuningJob's namespace with the key HF_TOKEN, "
            "a Hugging Face access token that may read the repository (needed for gated models "
            "such as Llama or Gemma, and for private ones). It reaches the training pod only as "
            "a Secret reference (the HF_TOKEN variable)."
        ),
    )

    @model_validator(mode="after")
    def _access_secret_needs_hub(self) -> ModelSpec:
        if self.access_secret is not None and not self.source.startswith("hf://"):
            raise ValueError(
                "accessSecret holds a Hugging Face token and applies only to an hf:// source; "
                "remove it, or use an hf://ORG/NAME source"
            )
        return self

    @field_validator("source")
    @classmethod
    def _source_stays_in_its_claim(cls, value: str) -> str:
        if value.startswith("pvc://") and ".." in value.split("/"):
            raise ValueError(str(_PVC_ESCAPE_RULE["message"]))
        return value


# ---------------------------------------------------------------------------
# Dataset

DatasetFormat = Literal[
    "auto", "alpaca", "dolly", "messages", "sharegpt", "prompt-completion", "text"
]
# The chat templates the trainer knows by name (kubetune/trainer/data/templates.py
# BUILTIN, plus auto and tokenizer); anything else must be an inline Jinja template.
TEMPLATE_NAMES = ("auto", "tokenizer", "chatml", "llama3", "mistral", "alpaca", "zephyr")
_TEMPLATE_HINT = f"use one of {', '.join(TEMPLATE_NAMES)}, or an inline Jinja chat template (containing {{% or {{{{)"


def _check_template(value: str) -> str:
    if value in TEMPLATE_NAMES or "{%" in value or "{{" in value:
        return value
    raise ValueError(f"unknown template {value!r}; {_TEMPLATE_HINT}")


RedactionKind = Literal["email", "phone", "credit-card", "ipv4", "ipv6", "iban", "us-ssn", "url"]


class SplitSpec(ApiModel):
    """A held-out split: a fraction of the training source, or a source of its own."""

    # The same rule as _exactly_one, for the API server (see kubetune/api/crd.py).
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.fraction) != has(self.source)",
                    "message": "set exactly one of fraction (e.g. 0.05) or source (a file or prefix)",
                }
            ]
        }
    )

    fraction: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description=(
            "Share of the training examples to hold out, chosen deterministically from "
            "training.seed (and stratified by dataset.stratifyBy when set)."
        ),
    )
    source: str | None = Field(
        default=None,
        max_length=URI,
        description="A separate file or prefix for this split, in the same format as dataset.source.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SplitSpec:
        if (self.fraction is None) == (self.source is None):
            raise ValueError(
                "set exactly one of `fraction` (e.g. 0.05) or `source` (a file or prefix)"
            )
        return self


class DatasetSpec(ApiModel):
    # The same rules as the validators below, for the API server.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": (
                        "!has(self.validation) || !has(self.test) || !has(self.validation.fraction) || "
                        "!has(self.test.fraction) || self.validation.fraction + self.test.fraction < 1.0"
                    ),
                    "message": (
                        "validation.fraction + test.fraction must be less than 1, so that training keeps "
                        "some examples"
                    ),
                },
            ]
        }
    )

    source: str = Field(
        min_length=1,
        max_length=URI,
        description=(
            "The training data: s3://bucket/key for one file, s3://bucket/prefix/ for every "
            "data file under it, pvc://claim/path (mounted read-only, as for models), "
            "https://host/file (read with fsspec; any other fsspec URL whose "
            "filesystem the trainer has, with `kubetune train`), or a local path for "
            "`kubetune prepare/train` on a workstation. "
            "JSON Lines (.jsonl, .jsonl.gz), JSON arrays (.json), Parquet (.parquet) and CSV (.csv)."
        ),
    )
    format: DatasetFormat = Field(
        default="auto",
        description=(
            "How records map to conversations. auto detects it from the columns: alpaca "
            "(instruction/input/output), dolly (instruction/context/response), messages "
            "(a list of {role, content}), sharegpt (conversations of {from, value}), "
            "prompt-completion (prompt/completion), text (plain text, for domain adaptation)."
        ),
    )
    columns: dict[str, ShortString] = Field(
        default_factory=dict,
        max_length=16,
        description=(
            "Renames columns to the names the format expects, as {expected: actual}; for "
            "example {instruction: question, output: answer} for an alpaca-like file."
        ),
    )
    template: Annotated[str, AfterValidator(_check_template)] = Field(
        default="auto",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self in {list(TEMPLATE_NAMES)!r} || self.contains('{{%') "
                    "|| self.contains('{{')",
                    "message": _TEMPLATE_HINT,
                }
            ]
        },
        min_length=1,
        max_length=TEMPLATE,
        description=(
            "The chat template. auto uses the tokenizer's own chat template and falls back to "
            "chatml when it has none; tokenizer insists on the tokenizer's own; chatml, llama3, "
            "mistral, alpaca and zephyr name built-in templates; anything containing '{%' or "
            "'{{' is used as an inline Jinja chat template."
        ),
    )
    system_prompt: str | None = Field(
        default=None,
        max_length=TEMPLATE,
        description="A system message put before every conversation that has none of its own.",
    )
    validation: SplitSpec | None = Field(
        default_factory=lambda: SplitSpec(fraction=0.05),
        description="The validation split, used for eval loss during training. Null for none.",
    )
    test: SplitSpec | None = Field(
        default=None,
        description="An optional test split, evaluated once at the end of training.",
    )
    stratify_by: str | None = Field(
        default=None,
        max_length=SHORT,
        description=(
            "A column whose values keep their proportions across splits, such as Dolly's "
            "category. Unset: the category column is used when the data has one."
        ),
    )
    redact: list[RedactionKind] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Kinds of personal data to replace with typed placeholders (e.g. <EMAIL>) before "
            "tokenization; the counts per kind go into the prepare report."
        ),
    )
    on_invalid: Literal["fail", "skip"] = Field(
        default="fail",
        description=(
            "What to do with a record that cannot be used (bad JSON, missing field, no "
            "assistant turn): fail the run listing the first problems, or skip and count it."
        ),
    )
    max_examples: int | None = Field(
        default=None,
        ge=1,
        description="Use only the first N training examples (for trials and demos).",
    )

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DatasetSpec:
        fractions = [
            split.fraction
            for split in (self.validation, self.test)
            if split is not None and split.fraction is not None
        ]
        if sum(fractions) >= 1:
            raise ValueError(
                f"validation.fraction + test.fraction is {sum(fractions):g}; it must be less than 1, "
                "so that training keeps some examples"
            )
        return self


# ---------------------------------------------------------------------------
# Method

LoraTargets = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=SHORT)]], Field(max_length=64)
]


class LoraSpec(ApiModel):
    r: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="LoRA rank: the inner dimension of the adapter matrices.",
    )
    alpha: float = Field(
        default=32.0, gt=0, description="LoRA scaling numerator; the update is scaled by alpha / r."
    )
    dropout: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapter's input during training."
    )
    target_modules: LoraTargets = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        description=(
            "Module names (or suffixes) that get adapters, such as [q_proj, v_proj]. "
            "[all-linear] targets every linear layer except the output head."
        ),
    )

    use_dora: bool = Field(
        default=False,
        description=(
            "DoRA (peft's use_dora): each adapted weight is split into a magnitude and a direction "
            "and the LoRA update trains the direction; often closer to full fine-tuning at the "
            "same rank, about 1.5-2x slower per step. Works with type qlora and lora."
        ),
    )
    use_rslora: bool = Field(
        default=False,
        description=(
            "Rank-stabilised LoRA (peft's use_rslora): the update is scaled by alpha / sqrt(r) "
            "instead of alpha / r, so higher ranks keep learning; the same cost as LoRA."
        ),
    )

    @model_validator(mode="after")
    def _all_linear_alone(self) -> LoraSpec:
        if "all-linear" in self.target_modules and len(self.target_modules) > 1:
            raise ValueError(
                "targetModules: all-linear already targets every linear layer; give either "
                "[all-linear] or a list of module names, not both"
            )
        return self


class PromptTuningSpec(ApiModel):
    virtual_tokens: int = Field(
        default=20,
        ge=1,
        le=1024,
        description=(
            "Number of virtual tokens: trainable embeddings put before every example; the "
            "only weights that train (peft's PromptTuningConfig.num_virtual_tokens)."
        ),
    )
    init: Literal["random", "text"] = Field(
        default="random",
        description=(
            "How the virtual tokens start: random, or text (the embeddings of initText's tokens, "
            "repeated to fill virtualTokens), which usually learns faster."
        ),
    )
    init_text: str | None = Field(
        default=None,
        max_length=4096,
        description="For init: text, a description of the task, such as 'Classify the animal:'.",
    )

    @model_validator(mode="after")
    def _text_when_text(self) -> PromptTuningSpec:
        if (self.init == "text") != (self.init_text is not None):
            raise ValueError(
                "promptTuning: set initText together with init: text (and only then), e.g. "
                "{init: text, initText: 'Classify the animal:'}"
            )
        return self


MethodType = Literal["qlora", "lora", "full", "prompt-tuning"]
ADAPTER_METHODS = ("qlora", "lora", "prompt-tuning")  # methods whose result is a peft adapter


class MethodSpec(ApiModel):
    # The same rule as _weights_match_type, for the API server.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.type) || self.type != 'qlora' || !has(self.baseWeights) || self.baseWeights == 'auto'",
                    "message": (
                        "baseWeights must be auto for type qlora, whose base weights are always 4-bit NF4; "
                        "use type: lora for bf16/fp16/fp32/int8 base weights"
                    ),
                }
            ]
        }
    )

    type: MethodType = Field(
        default="qlora",
        description=(
            "qlora: the base model is quantized to 4-bit NF4 (bitsandbytes, double quantization) "
            "and frozen, adapters train in the compute dtype. lora: the base model stays in "
            "baseWeights precision (bf16/fp16/fp32, or int8 to save memory). full: every weight "
            "trains (for models whose weights, gradients and AdamW state fit: about 16 bytes per "
            "parameter in fp32) and the result is a whole model in safetensors under model/. "
            "prompt-tuning: the base is frozen and only promptTuning.virtualTokens embeddings "
            "train (peft's prompt tuning; needs training.packing: false)."
        ),
    )
    lora: LoraSpec = Field(
        default_factory=LoraSpec, description="Adapter shape, for type qlora and lora."
    )
    prompt_tuning: PromptTuningSpec = Field(
        default_factory=PromptTuningSpec, description="Virtual tokens, for type prompt-tuning."
    )
    init_adapter: str | None = Field(
        default=None,
        max_length=URI,
        description=(
            "Continue training from an existing peft adapter instead of fresh weights: an "
            "s3://bucket/prefix/ (or a local folder for `kubetune train` on a workstation) holding "
            "adapter_config.json and adapter_model.safetensors, such as an earlier run's "
            "<output.destination>/adapter/. Its kind must fit "
            "type (LoRA for qlora/lora, prompt tuning for prompt-tuning) and its weights this "
            "base model; its shape (r, alpha, target modules, virtual tokens) is used, and "
            "lora/promptTuning fields set in this spec must agree with it. Checked before training."
        ),
    )
    base_weights: Literal["auto", "bf16", "fp16", "fp32", "int8"] = Field(
        default="auto",
        description=(
            "For type lora: the precision the frozen base weights are held in. auto picks bf16 "
            "where the device supports it, else fp32. Must be auto for type qlora (always 4-bit)."
        ),
    )
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description="Dtype of the matrix products; auto picks bf16 where supported, else fp32.",
    )
    gradient_checkpointing: bool = Field(
        default=True,
        description="Recompute activations in the backward pass: less memory, about 30% more compute.",
    )
    merge_adapter: bool = Field(
        default=False,
        description="Also export the base model with the adapter merged in (full precision), for serving without peft.",
    )

    @model_validator(mode="after")
    def _weights_match_type(self) -> MethodSpec:
        if self.type == "qlora" and self.base_weights != "auto":
            raise ValueError(
                f"baseWeights: {self.base_weights} conflicts with type: qlora, whose base weights are "
                "always 4-bit NF4; use type: lora for bf16/fp16/fp32/int8 base weights"
            )
        if self.type == "full" and self.base_weights in ("int8", "fp16"):
            raise ValueError(
                f"baseWeights: {self.base_weights} conflicts with type: full, which trains every "
                "weight and needs them in bf16 or fp32 (int8 weights cannot train, fp16 ones lose "
                "the small updates); use baseWeights: auto, bf16 or fp32"
            )
        if self.type == "full" and self.init_adapter is not None:
            raise ValueError(
                "initAdapter continues an adapter, but type: full trains the whole model and has "
                "none; remove initAdapter, or point model.source at a merged model to continue from"
            )
        if self.merge_adapter and self.type not in ("qlora", "lora"):
            raise ValueError(
                f"mergeAdapter merges LoRA weights into the base, but type: {self.type} has no LoRA "
                "weights to merge; remove mergeAdapter"
            )
        return self


# ---------------------------------------------------------------------------
# Training


class EarlyStoppingSpec(ApiModel):
    patience: int = Field(
        default=3,
        ge=1,
        le=1000,
        description=(
            "Stop after this many evaluations in a row (every evalEvery steps) without a new "
            "best validation loss."
        ),
    )
    min_delta: float = Field(
        default=0.0,
        ge=0.0,
        description="An evaluation counts as better only when it lowers the best loss by more than this.",
    )


class TrainingSpec(ApiModel):
    epochs: Annotated[float, Field(gt=0, le=1000)] | Literal["auto"] = Field(
        default=AUTO,
        description=(
            "Passes over the training split (fractions allowed), or auto: 3, raised to "
            "ceil(100 / examples) (at most 25) for fewer than 34 examples and lowered to "
            "25000 / examples (at least 1) above 8333, the rule of OpenAI's fine-tuning API."
        ),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many optimizer steps; overrides epochs when set.",
    )
    learning_rate: Annotated[float, Field(gt=0, le=1.0)] | Literal["auto"] = Field(
        default=AUTO,
        description=(
            "Peak learning rate of the trained weights, or auto: by method.type, 2e-4 for qlora "
            "and lora (the QLoRA paper's), 2e-5 for full, 3e-2 for prompt-tuning (peft's)."
        ),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="Learning-rate decay after warmup."
    )
    warmup_ratio: float = Field(
        default=0.03,
        ge=0.0,
        lt=1.0,
        description="Share of the optimizer steps spent warming the learning rate up from zero.",
    )
    weight_decay: float = Field(
        default=0.0, ge=0.0, description="AdamW weight decay on the adapter weights."
    )
    max_grad_norm: float = Field(
        default=1.0, gt=0, description="Gradients are clipped to this global L2 norm."
    )
    optimizer: Literal["auto", "adamw", "paged-adamw-8bit"] = Field(
        default="auto",
        description="auto: paged 8-bit AdamW on a GPU, AdamW elsewhere.",
    )
    batch_size: IntOrAuto = Field(
        default=AUTO,
        description=(
            "Sequences (packs, when packing) per device per micro-batch, or auto. With auto "
            "(here or in gradientAccumulation) the sequences per optimizer step are the training "
            "rows / 16 rounded down to a power of two, between 1 and 8 (at least 16 steps an "
            "epoch on small data, 8 per step on large); auto in both: 1 x that."
        ),
    )
    gradient_accumulation: IntOrAuto = Field(
        default=AUTO,
        description="Micro-batches per optimizer step, or auto (see batchSize).",
    )
    max_seq_length: int = Field(
        default=2048, ge=16, le=1 << 20, description="Tokens per sequence (per pack, when packing)."
    )
    packing: bool = Field(
        default=True,
        description=(
            "Bin-pack examples into maxSeqLength sequences, padding-free, with position ids "
            "restarting per example so no token attends across examples. Off: padded, "
            "length-bucketed batches."
        ),
    )
    loss_on: Literal["responses", "last-response", "all"] = Field(
        default="responses",
        description=(
            "Which tokens are trained: responses (every assistant turn with its end-of-turn "
            "token), last-response (the final assistant turn only), all (every token)."
        ),
    )
    overlong: Literal["truncate", "drop"] = Field(
        default="truncate",
        description="What to do with an example longer than maxSeqLength; either way it is counted in the report.",
    )
    eval_every: int = Field(
        default=200,
        ge=1,
        description="Evaluate on the validation split every N optimizer steps, and at the end.",
    )
    checkpoint_every: int = Field(
        default=200, ge=1, description="Save a resumable checkpoint every N optimizer steps."
    )
    keep_checkpoints: int = Field(
        default=2, ge=1, le=100, description="How many of the latest complete checkpoints to keep."
    )
    log_every: int = Field(
        default=10, ge=1, description="Log and append to metrics.jsonl every N optimizer steps."
    )
    eval_exact_match: bool = Field(
        default=False,
        description=(
            "At the end, generate a response for each test example and report the share that "
            "matches the reference exactly (for classification-style tasks)."
        ),
    )
    seed: int = Field(
        default=42,
        ge=0,
        le=2**32 - 1,  # numpy's seeds are 32-bit: a larger one would fail in the pod
        description="Seeds data splits, shuffling, dropout and adapter initialisation (0 to 2^32-1).",
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None,
        description=(
            "Stop before maxSteps/epochs when the validation loss stops improving (needs a "
            "validation split), and export the weights of the best evaluation (as exportBest)."
        ),
    )
    export_best: bool = Field(
        default=False,
        description=(
            "Export the weights of the evaluation with the lowest validation loss instead of the "
            "last step's (kept at <output.destination>/best/ while training). On with "
            "earlyStopping; off otherwise, since the last weights are what the schedule asked for "
            "and a small validation split's minimum is partly noise."
        ),
    )
    loss_spike_factor: float | None = Field(
        default=10.0,
        gt=1.0,
        le=1000.0,
        description=(
            "Stop the run (reason InvalidSpec, with the step) when a step's loss exceeds this "
            "many times the median of the previous 20 steps' losses, and that median by at least "
            "2 (nats), from step 10 on; the diverged step is not applied. Null: only a non-finite "
            "loss (NaN, infinity) stops the run, which it always does."
        ),
    )


# ---------------------------------------------------------------------------
# Output and storage


class OutputSpec(ApiModel):
    destination: str = Field(
        min_length=1,
        max_length=URI,
        description=(
            "Where results go: an s3://bucket/prefix/ (or a local path for `kubetune train` "
            "on a workstation). Layout: adapter/, checkpoints/step-NNNNNN/, metrics.jsonl, "
            "prepare-report.json. The operator never deletes anything here."
        ),
    )


# Credentials in an endpoint URL (https://KEY:SECRET@host) would be copied into the
# Job, the status and Events: refused, by the API server and by the model.
_ENDPOINT_USERINFO_RULE: JsonDict = {
    "rule": "!self.matches('^[^/?#]*//[^/?#]*@')",
    "message": "the endpoint URL may not hold credentials (user:password@); use credentialsSecret",
}


class ConfigMapKey(ApiModel):
    name: str = Field(
        min_length=1,
        max_length=SHORT,
        description="Name of a ConfigMap in the TuningJob's namespace.",
    )
    key: str = Field(
        default="ca.crt",
        min_length=1,
        max_length=SHORT,
        description="The key that holds the PEM bundle.",
    )


class S3Spec(ApiModel):
    endpoint: str | None = Field(
        default=None,
        max_length=URI,
        json_schema_extra={"x-kubernetes-validations": [_ENDPOINT_USERINFO_RULE]},
        description="S3 endpoint URL for MinIO, SeaweedFS or another S3-compatible store; unset for AWS S3.",
    )
    region: str | None = Field(
        default=None, max_length=64, description="S3 region; unset uses the SDK's default chain."
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="Bucket addressing: path (endpoint/bucket/key, what most self-hosted stores need), virtual, or auto.",
    )

    @field_validator("endpoint")
    @classmethod
    def _no_credentials_in_the_endpoint(cls, value: str | None) -> str | None:
        if value is not None and re.match(r"^[^/?#]*//[^/?#]*@", value):
            raise ValueError(str(_ENDPOINT_USERINFO_RULE["message"]))
        return value

    credentials_secret: str | None = Field(
        default=None,
        max_length=SHORT,
        description=(
            "Name of a Secret in the TuningJob's namespace with the keys AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN). Unset: the operator's "
            "default Secret, else the pod's own identity (IRSA, workload identity)."
        ),
    )
    ca_bundle: ConfigMapKey | None = Field(
        default=None,
        description=(
            "For an endpoint whose TLS certificate is signed by a private CA: a ConfigMap key that "
            "holds the CA certificates (PEM). It is mounted read-only in the pods and the S3 "
            "client trusts it (AWS_CA_BUNDLE). For `kubetune train` on a workstation, set "
            "AWS_CA_BUNDLE yourself."
        ),
    )


# ---------------------------------------------------------------------------
# Resources, scheduling, runtime


# A Kubernetes resource quantity (kubetune.api.quantity); positive.
Quantity = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
                    "message": QUANTITY_HINT,
                }
            ]
        },
    ),
    AfterValidator(check_positive_quantity),
]


class ResourcesSpec(ApiModel):
    gpus: int = Field(
        default=1,
        ge=0,
        le=64,
        description="GPUs for the training pod; more than one trains data-parallel with torchrun. 0 trains on CPU.",
    )
    cpu: Quantity | None = Field(
        default=None, description="CPU request and limit, e.g. '8'. Unset: the operator's default."
    )
    memory: Quantity | None = Field(
        default=None,
        description="Memory request and limit, e.g. 64Gi. Unset: the operator's default.",
    )
    ephemeral_storage: Quantity | None = Field(
        default=None,
        description="Ephemeral storage request, e.g. 100Gi. Unset: the operator's default.",
    )
    scratch_size: Quantity | None = Field(
        default=None,
        description=(
            "Size limit of the scratch volume that holds the downloaded model, data cache and "
            "checkpoints. Unset: the operator's default."
        ),
    )
    shm_size: Quantity | None = Field(
        default=None,
        description=(
            "Size of /dev/shm (memory-backed, counted in the memory limit), used by data loaders "
            "and NCCL. Unset: the operator's default."
        ),
    )


class Toleration(ApiModel):
    key: str | None = Field(
        default=None,
        max_length=SHORT,
        description="The taint key the toleration applies to; empty matches all keys.",
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default)."
    )
    value: str | None = Field(
        default=None, max_length=SHORT, description="The taint value the toleration matches."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="For NoExecute: how long the pod stays bound after the taint appears.",
    )


class SchedulingSpec(ApiModel):
    node_selector: dict[str, ShortString] = Field(
        default_factory=dict,
        max_length=32,
        description="Labels a node must have to run the training pod.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Taints the training pod tolerates (GPU pools are usually tainted).",
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description=(
            "A core/v1 Affinity for the training pod, passed through unchanged (the API server "
            "checks it when the operator creates the Job; `kubectl explain pod.spec.affinity` "
            "describes its fields). nodeAffinity picks nodes by label more flexibly than "
            "nodeSelector, e.g. requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms: "
            "[{matchExpressions: [{key: nvidia.com/gpu.product, operator: In, values: "
            "[NVIDIA-H100-80GB-HBM3]}]}]; podAffinity/podAntiAffinity place it near or away from "
            "other pods. A malformed affinity fails the TuningJob (InvalidSpec) before it runs."
        ),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: str | None = Field(
        default=None, max_length=SHORT, description="PriorityClass of the training pod."
    )
    runtime_class_name: str | None = Field(
        default=None,
        max_length=SHORT,
        description="RuntimeClass of the training pod (e.g. nvidia).",
    )
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        # It becomes a label value: the label-value rule (a DNS-1123-ish name of 63 at most).
        pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
        description=(
            "A Kueue LocalQueue: the Job is created suspended with the kueue.x-k8s.io/queue-name "
            "label and runs when Kueue admits it. A label value: at most 63 characters, "
            "letters, digits, '-', '_' and '.', starting and ending with a letter or digit."
        ),
    )


# Environment for the training pod, in Kubernetes' own shapes (core/v1 EnvVar and
# EnvFromSource), restricted to what a trainer needs: literal values and references to
# Secrets and ConfigMaps in the TuningJob's namespace. Values from Secrets travel only
# as references: they never appear in the Job, the status, Events or logs.

# The classic C identifier rule for variable names (what every shell can read).
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Names the operator sets itself; a TuningJob may not override them.
RESERVED_ENV_PREFIX = "KUBETUNE_"
RESERVED_ENV = frozenset(
    {
        "HOME",
        "TMPDIR",
        "PYTHONUNBUFFERED",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_CA_BUNDLE",
        "HF_TOKEN",
    }
)
_RESERVED_ENV_HINT = (
    "is set by the operator; use spec.s3.credentialsSecret for AWS credentials, "
    "spec.s3.caBundle for AWS_CA_BUNDLE and spec.model.accessSecret for HF_TOKEN"
)


def reserved_env_name(name: str) -> bool:
    return name.startswith(RESERVED_ENV_PREFIX) or name in RESERVED_ENV


class KeyReference(ApiModel):
    name: str = Field(
        min_length=1,
        max_length=SHORT,
        description="Name of the Secret or ConfigMap, in the TuningJob's namespace.",
    )
    key: str = Field(min_length=1, max_length=SHORT, description="The key to read.")
    optional: bool | None = Field(
        default=None,
        description="True: a missing object or key leaves the variable unset instead of holding the pod back.",
    )


class EnvVarSource(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.secretKeyRef) != has(self.configMapKeyRef)",
                    "message": "set exactly one of secretKeyRef or configMapKeyRef",
                }
            ]
        }
    )

    secret_key_ref: KeyReference | None = Field(
        default=None, description="A key of a Secret (the value never appears in the Job)."
    )
    config_map_key_ref: KeyReference | None = Field(
        default=None, description="A key of a ConfigMap."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("set exactly one of secretKeyRef or configMapKeyRef")
        return self


class EnvVar(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.value) && has(self.valueFrom))",
                    "message": "set value or valueFrom, not both",
                },
                {
                    "rule": "!self.name.startsWith('KUBETUNE_') && !(self.name in "
                    + repr(sorted(RESERVED_ENV))
                    + ")",
                    "message": f"this variable {_RESERVED_ENV_HINT}",
                },
            ]
        }
    )

    name: str = Field(
        min_length=1,
        max_length=SHORT,
        pattern=ENV_NAME_PATTERN,
        description="The variable's name (letters, digits and underscores, not starting with a digit).",
    )
    value: str | None = Field(
        default=None,
        max_length=TEMPLATE,
        description="A literal value. Put anything secret in a Secret and use valueFrom instead.",
    )
    value_from: EnvVarSource | None = Field(
        default=None, description="The value from a key of a Secret or a ConfigMap."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"{self.name}: set value or valueFrom, not both")
        if reserved_env_name(self.name):
            raise ValueError(f"{self.name} {_RESERVED_ENV_HINT}")
        return self


class ObjectReference(ApiModel):
    name: str = Field(
        min_length=1,
        max_length=SHORT,
        description="Name of the Secret or ConfigMap, in the TuningJob's namespace.",
    )
    optional: bool | None = Field(
        default=None,
        description="True: a missing object is ignored instead of holding the pod back.",
    )


class EnvFromSource(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.secretRef) != has(self.configMapRef)",
                    "message": "set exactly one of secretRef or configMapRef",
                }
            ]
        }
    )

    prefix: str | None = Field(
        default=None,
        max_length=SHORT,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Put before every key's name, e.g. PROXY_. Must not be KUBETUNE_.",
    )
    secret_ref: ObjectReference | None = Field(
        default=None, description="Every key of a Secret becomes a variable."
    )
    config_map_ref: ObjectReference | None = Field(
        default=None, description="Every key of a ConfigMap becomes a variable."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvFromSource:
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError("set exactly one of secretRef or configMapRef")
        if self.prefix and self.prefix.startswith(RESERVED_ENV_PREFIX):
            raise ValueError(
                f"prefix: {RESERVED_ENV_PREFIX} is reserved for the operator's variables"
            )
        return self


# Label and annotation keys: an optional DNS-subdomain prefix and a name (qualified names).
_QUALIFIED_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
# Keys the operator sets on its pods and finds them by, and those of the Job controller.
RESERVED_METADATA_PREFIXES = ("kubetune.dev/", "batch.kubernetes.io/", "app.kubernetes.io/")
RESERVED_METADATA_KEYS = frozenset({"controller-uid", "job-name", "kueue.x-k8s.io/queue-name"})


def metadata_key_problem(key: str) -> str | None:
    if not _QUALIFIED_KEY.match(key) or len(key) > SHORT + 64:
        return f"{key!r} is not a valid key: an optional DNS prefix and '/', then up to 63 letters, digits, '-', '_' or '.'"
    if key in RESERVED_METADATA_KEYS or key.startswith(RESERVED_METADATA_PREFIXES):
        return (
            f"{key!r} is set by the operator or the Job controller; keys under "
            f"{', '.join(RESERVED_METADATA_PREFIXES)} are reserved"
        )
    return None


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        problem = metadata_key_problem(key)
        if problem:
            raise ValueError(problem)
        if not _LABEL_VALUE.match(value):
            raise ValueError(
                f"label {key}: {value!r} is not a valid label value (up to 63 letters, digits, "
                "'-', '_' or '.', starting and ending with a letter or digit)"
            )
    return labels


def _check_annotations(annotations: dict[str, str]) -> dict[str, str]:
    for key in annotations:
        problem = metadata_key_problem(key)
        if problem:
            raise ValueError(problem)
    return annotations


_RESERVED_KEYS_RULE = {
    "rule": "self.all(k, "
    + " && ".join(f"!k.startsWith('{prefix}')" for prefix in RESERVED_METADATA_PREFIXES)
    + f" && !(k in {sorted(RESERVED_METADATA_KEYS)!r}))",
    "message": (
        "keys under kubetune.dev/, batch.kubernetes.io/ and app.kubernetes.io/, and controller-uid, "
        "job-name and kueue.x-k8s.io/queue-name, are set by the operator or the Job controller"
    ),
}

PodLabels = Annotated[
    # (Key lengths are checked by metadata_key_problem: a CRD schema cannot bound map keys.)
    dict[str, Annotated[str, Field(max_length=63)]],
    Field(max_length=64, json_schema_extra={"x-kubernetes-validations": [_RESERVED_KEYS_RULE]}),
    AfterValidator(_check_labels),
]
PodAnnotations = Annotated[
    dict[str, Annotated[str, Field(max_length=TEMPLATE)]],
    Field(max_length=64, json_schema_extra={"x-kubernetes-validations": [_RESERVED_KEYS_RULE]}),
    AfterValidator(_check_annotations),
]


class RuntimeSpec(ApiModel):
    image: str | None = Field(
        default=None,
        max_length=URI,
        description="Trainer image. Unset: the operator's default trainer image.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Pull policy of the trainer image. Unset: the Kubernetes default."
    )
    service_account_name: str | None = Field(
        default=None,
        max_length=SHORT,
        description="ServiceAccount the training pod runs as (e.g. for IRSA).",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=128,
        description=(
            "Environment variables of the training pod, as in a container's env: a literal value, "
            "or valueFrom a secretKeyRef or configMapKeyRef (for proxies, tokens, tracing). "
            "KUBETUNE_* and the variables the operator sets (HOME, TMPDIR, AWS credentials, "
            "AWS_CA_BUNDLE, HF_TOKEN) are reserved."
        ),
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        max_length=16,
        description="Every key of a Secret (secretRef) or ConfigMap (configMapRef) as a variable, as in a container's envFrom.",
    )
    pod_labels: PodLabels = Field(
        default_factory=dict,
        description=(
            "Labels for the training pod (e.g. for cost allocation or network policies). Keys under "
            "kubetune.dev/, app.kubernetes.io/ and batch.kubernetes.io/ are the operator's."
        ),
    )
    pod_annotations: PodAnnotations = Field(
        default_factory=dict,
        description="Annotations for the training pod (e.g. for a service mesh or log routing).",
    )
    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Retries after transient failures; preemption and permanent errors do not count.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the run when it has been running this long."
    )
    # At least a minute: a Job removed before the operator has read its verdict is
    # created again (as for a Job deleted by hand), so a TTL shorter than the operator's
    # reaction time, 0 above all, would rerun a finished job over and over.
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=60,
        description=(
            "Delete the finished Job and its pods after this many seconds (at least 60, so the "
            "operator reads the outcome first); the TuningJob and its status stay."
        ),
    )


# ---------------------------------------------------------------------------
# The spec


class TuningJobSpec(ApiModel):
    model: ModelSpec = Field(description="The base model to tune.")
    dataset: DatasetSpec = Field(description="The training data and how it is formatted.")
    method: MethodSpec = Field(
        default_factory=MethodSpec,
        description="What trains: QLoRA, LoRA (DoRA, rsLoRA), prompt tuning or the full model.",
    )
    training: TrainingSpec = Field(
        default_factory=TrainingSpec, description="Optimisation, evaluation and checkpointing."
    )
    output: OutputSpec = Field(
        description="Where the adapter, checkpoints and metrics are written."
    )
    s3: S3Spec = Field(
        default_factory=S3Spec, description="How to reach S3 for every s3:// URI in this spec."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Compute for the training pod."
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Where and when the training pod runs."
    )
    runtime: RuntimeSpec = Field(
        default_factory=RuntimeSpec,
        description="Image, identity, retries and deadlines of the training Job.",
    )
    suspend: bool = Field(
        default=False,
        description="True stops the run (its pod is deleted after a checkpoint) and keeps it stopped; false resumes it.",
    )

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "x-kubernetes-validations": [
                # The same rules as the validators below, for the API server.
                {
                    "rule": "self.resources.gpus > 0 || (self.method.computeDtype != 'fp16' && "
                    "self.method.baseWeights != 'fp16' && self.training.optimizer != 'paged-adamw-8bit')",
                    "message": (
                        "fp16 (method.computeDtype, method.baseWeights) and training.optimizer "
                        "paged-adamw-8bit need a CUDA GPU, and resources.gpus is 0; use auto, or request a GPU"
                    ),
                },
                {
                    "rule": "!self.training.evalExactMatch || has(self.dataset.test)",
                    "message": (
                        "training.evalExactMatch generates answers for the test split; add dataset.test "
                        "or set evalExactMatch: false"
                    ),
                },
            ]
        },
    )

    @model_validator(mode="after")
    def _cpu_only_settings(self) -> TuningJobSpec:
        if self.resources.gpus:
            return self
        for field, value, need in (
            ("method.computeDtype", self.method.compute_dtype, "fp16"),
            ("method.baseWeights", self.method.base_weights, "fp16"),
            ("training.optimizer", self.training.optimizer, "paged-adamw-8bit"),
        ):
            if value == need:
                raise ValueError(
                    f"{field}: {need} needs a CUDA GPU, and resources.gpus is 0 (training on CPU); "
                    "use auto, or request a GPU"
                )
        return self

    @model_validator(mode="after")
    def _best_needs_a_validation_split(self) -> TuningJobSpec:
        training = self.training
        if (training.early_stopping or training.export_best) and self.dataset.validation is None:
            field = "earlyStopping" if training.early_stopping else "exportBest"
            raise ValueError(
                f"training.{field} compares validation losses, but dataset.validation is null; "
                "add dataset.validation (a fraction or a source) or remove it"
            )
        return self

    @model_validator(mode="after")
    def _prompt_tuning_is_not_packed(self) -> TuningJobSpec:
        if self.method.type == "prompt-tuning" and self.training.packing:
            raise ValueError(
                "method.type prompt-tuning puts its virtual tokens before each row, and a packed row "
                "holds several examples; set training.packing: false"
            )
        return self

    @model_validator(mode="after")
    def _exact_match_needs_a_test_split(self) -> TuningJobSpec:
        if self.training.eval_exact_match and self.dataset.test is None:
            raise ValueError(
                "training.evalExactMatch generates answers for the test split, but dataset.test is not "
                "set; add dataset.test (a fraction or a source) or set evalExactMatch: false"
            )
        return self


class ObjectMeta(BaseModel):
    """The part of metadata kubetune reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(default="local", max_length=SHORT)
    namespace: str | None = Field(default=None, max_length=63)


class TuningJob(BaseModel):
    """A whole manifest: what `kubectl apply` sends and `kubetune train -f` reads."""

    model_config = ConfigDict(extra="allow")

    api_version: Literal["kubetune.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TuningJob"]
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: TuningJobSpec
