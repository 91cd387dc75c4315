"""The training plan: what the spec asks for, resolved against the machine it runs on.

`make_plan(spec, hardware)` is a pure function: it decides the device, the number of
data-parallel processes, the precision of the base weights and of the matmuls, and the
optimizer, and it rejects combinations that cannot work *before* any weights are
downloaded or any GPU time is spent. Each rejection says what to change in the
manifest's own field names. `Hardware.probe()` is the only part that looks at the
machine (torch, CUDA, bitsandbytes).

Decisions (also in docs/trainer.md):
- `resources.gpus: N` with N CUDA devices visible → N processes (NCCL), one per GPU.
  Without CUDA the run happens on CPU: still N processes (gloo) when N > 1, which is
  how CI exercises data parallelism on a machine without GPUs.
- compute dtype `auto`: bf16 on GPUs that support it (Ampere and later), fp16 on older
  GPUs, fp32 on CPU (CPU bf16 autocast is slower than fp32 for small models and less
  accurate; ask for bf16 explicitly to get it).
- optimizer `auto`: paged 8-bit AdamW on GPU (its state pages to host memory under
  pressure instead of failing), torch AdamW on CPU. Paging needs CUDA, so
  `paged-adamw-8bit` on CPU is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from kubetune.api.v1alpha1 import TuningJobSpec
from kubetune.trainer.errors import InvalidConfigError, TrainerError

log = logging.getLogger(__name__)

DeviceType = Literal["cuda", "cpu"]
Precision = Literal["bf16", "fp16", "fp32"]
BaseWeights = Literal["nf4", "int8", "bf16", "fp16", "fp32"]
Optimizer = Literal["adamw", "paged-adamw-8bit"]


@dataclass(frozen=True)
class Hardware:
    """What the trainer can use on this machine."""

    cuda_devices: int = 0
    cuda_bf16: bool = False  # every visible GPU supports bf16 matmuls
    bitsandbytes: bool = False  # bitsandbytes' native library loaded (4-bit/8-bit layers work)
    name: str = "cpu"

    @classmethod
    def probe(cls) -> Hardware:
        import torch

        from kubetune.trainer.quantization import native_library_loaded

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return cls(
            cuda_devices=count,
            cuda_bf16=bool(count) and torch.cuda.is_bf16_supported(),
            bitsandbytes=native_library_loaded(),
            name=torch.cuda.get_device_name(0) if count else "cpu",
        )


@dataclass(frozen=True)
class TrainPlan:
    """Resolved decisions; logged at start and written into training-summary.json."""

    device_type: DeviceType
    world_size: int  # data-parallel processes
    backend: Literal["nccl", "gloo"]
    base_weights: BaseWeights
    compute_dtype: Precision
    optimizer: Optimizer
    gradient_checkpointing: bool
    notes: tuple[str, ...] = field(default=())  # decisions a user may not expect, for the log

    @property
    def quantized(self) -> bool:
        return self.base_weights in ("nf4", "int8")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def make_plan(spec: TuningJobSpec, hardware: Hardware) -> TrainPlan:
    """Resolve the spec against the hardware; InvalidConfigError for what cannot work."""
    notes: list[str] = []
    gpus = spec.resources.gpus
    if gpus >= 1 and hardware.cuda_devices:
        if gpus > hardware.cuda_devices:
            # The pod asked for more GPUs than it sees: a node or device-plugin problem,
            # not the spec's fault, so this may be retried (on another node).
            raise TrainerError(
                f"resources.gpus is {gpus} but only {hardware.cuda_devices} CUDA device(s) are visible "
                "in this container; check the node's GPU device plugin"
            )
        device: DeviceType = "cuda"
    else:
        device = "cpu"
        if gpus >= 1:
            notes.append(f"resources.gpus is {gpus} but no CUDA device is visible: training on CPU")
    world_size = max(gpus, 1)
    if device == "cpu" and world_size > 1:
        notes.append(f"{world_size} data-parallel CPU processes (gloo), one per requested GPU")

    method, training = spec.method, spec.training
    compute = _compute_dtype(method.compute_dtype, device, hardware)
    base = _base_weights(method.type, method.base_weights, compute, device, hardware)

    optimizer: Optimizer
    if training.optimizer == "auto":
        optimizer = "paged-adamw-8bit" if device == "cuda" else "adamw"
    elif training.optimizer == "paged-adamw-8bit" and device != "cuda":
        raise InvalidConfigError(
            "spec.training.optimizer: paged-adamw-8bit pages optimizer state between GPU and host "
            "memory and needs a CUDA GPU; use adamw (or auto) to train on CPU"
        )
    else:
        optimizer = training.optimizer
    if optimizer == "paged-adamw-8bit" and not hardware.bitsandbytes:
        raise InvalidConfigError(
            "spec.training.optimizer: paged-adamw-8bit needs bitsandbytes' native library, which did "
            "not load on this machine; use adamw"
        )

    return TrainPlan(
        device_type=device,
        world_size=world_size,
        backend="nccl" if device == "cuda" else "gloo",
        base_weights=base,
        compute_dtype=compute,
        optimizer=optimizer,
        gradient_checkpointing=method.gradient_checkpointing,
        notes=tuple(notes),
    )


def _compute_dtype(asked: str, device: DeviceType, hardware: Hardware) -> Precision:
    if asked == "auto":
        if device == "cuda":
            return "bf16" if hardware.cuda_bf16 else "fp16"
        return "fp32"
    if asked == "bf16" and device == "cuda" and not hardware.cuda_bf16:
        raise InvalidConfigError(
            f"spec.method.computeDtype: bf16 is not supported by this GPU ({hardware.name}); "
            "use fp16 or auto"
        )
    if asked == "fp16" and device == "cpu":
        raise InvalidConfigError(
            "spec.method.computeDtype: fp16 needs a CUDA GPU (it trains with loss scaling); "
            "use bf16, fp32 or auto on CPU"
        )
    return asked  # type: ignore[return-value]


def _base_weights(
    method: str, asked: str, compute: Precision, device: DeviceType, hardware: Hardware
) -> BaseWeights:
    if method == "qlora":
        if not hardware.bitsandbytes:
            raise InvalidConfigError(
                "spec.method.type: qlora quantizes the base model to 4-bit with bitsandbytes, whose "
                f"native library did not load on this machine ({device}); use type: lora"
            )
        return "nf4"
    if asked == "auto":
        # Full fine-tuning keeps fp32 master weights under fp16 compute (loss scaling cannot
        # unscale fp16 gradients, and fp16 weights lose small updates).
        return "fp32" if method == "full" and compute == "fp16" else compute
    if method == "full" and asked in ("int8", "fp16"):  # the API model rejects these too
        raise InvalidConfigError(
            f"spec.method.baseWeights: {asked} cannot be trained in place; type full needs bf16 or fp32"
        )
    if asked == "int8" and not hardware.bitsandbytes:
        raise InvalidConfigError(
            "spec.method.baseWeights: int8 needs bitsandbytes' native library, which did not load on "
            f"this machine ({device}); use bf16 or fp32"
        )
    if asked == "fp16" and device == "cpu":
        raise InvalidConfigError(
            "spec.method.baseWeights: fp16 needs a CUDA GPU; use bf16 or fp32 on CPU"
        )
    if asked == "bf16" and device == "cuda" and not hardware.cuda_bf16:
        raise InvalidConfigError(
            f"spec.method.baseWeights: bf16 is not supported by this GPU ({hardware.name}); use fp16"
        )
    return asked  # type: ignore[return-value]
