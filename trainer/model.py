"""The (quantized) base model and its LoRA adapters (the tokenizer: tokenizer.py).

`load_model` turns a model folder and a `TrainPlan` into what the loop trains: a
`peft.PeftModel` whose only trainable parameters are the adapters, on the plan's
device. Problems a user can fix (target modules the model does not have) become
`InvalidConfigError`s that name the field.

Precision, as in the QLoRA paper: the frozen base holds NF4 (or int8, bf16, fp32)
weights; norms and the remaining unquantized weights are upcast to fp32
(`peft.prepare_model_for_kbit_training`); adapters are fp32 and matmuls run in the
compute dtype (the 4-bit layers' `compute_dtype`, and autocast in the loop).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.v1alpha1 import LoraSpec
from kubetune.trainer.errors import InvalidConfigError
from kubetune.trainer.plan import TrainPlan
from kubetune.trainer.quantization import (
    disable_cpu_inference_repacking,
    eight_bit_config,
    four_bit_config,
    quiet_bitsandbytes_import,
)

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

log = logging.getLogger(__name__)

ALL_LINEAR = "all-linear"


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def load_model(
    folder: Path, source: str, plan: TrainPlan, lora: LoraSpec, device: torch.device, seed: int
) -> PeftModel:
    """Base model in the plan's precision on `device`, frozen, with fresh LoRA adapters."""
    quiet_bitsandbytes_import()
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as e:
        raise InvalidConfigError(
            f"spec.model.source: {source}: unreadable config.json ({e})"
        ) from None

    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(plan.compute_dtype)
        if plan.base_weights == "nf4"
        else _base_dtype(plan),
        "device_map": {"": device},
        "attn_implementation": "sdpa",
    }
    if plan.base_weights == "nf4":
        kwargs["quantization_config"] = four_bit_config(torch_dtype(plan.compute_dtype))
    elif plan.base_weights == "int8":
        kwargs["quantization_config"] = eight_bit_config()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), config=config, **kwargs)
    except ValueError as e:
        # "Unrecognized configuration class ... for AutoModelForCausalLM": not a causal LM.
        raise InvalidConfigError(
            f"spec.model.source: {source}: transformers cannot load it as a causal language model "
            f"({str(e).splitlines()[0][:300]})"
        ) from None

    if plan.quantized:
        disable_cpu_inference_repacking(model)
        # Freezes the base, upcasts norms and the unquantized weights to fp32.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.requires_grad_(False)
    if plan.gradient_checkpointing:
        # Non-reentrant checkpointing needs no inputs that require grad and works with DDP.
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
        model.config.use_cache = False

    torch.manual_seed(seed)  # the adapters' initialisation
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=ALL_LINEAR
        if lora.target_modules == [ALL_LINEAR]
        else list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with peft_without_deprecation_noise():
            peft_model = get_peft_model(model, peft_config)
    except ValueError as e:
        if "not found in the base model" not in str(e) and "Target modules" not in str(e):
            raise
        raise InvalidConfigError(
            f"spec.method.lora.targetModules: {lora.target_modules} matches no layer of this model; "
            f"its linear layers are: {', '.join(linear_layer_names(model)) or 'none'}"
        ) from None
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    log.info(
        "model loaded: %s (%s base weights, %s compute), %d trainable of %d parameters (%.2f%%)",
        type(model).__name__,
        plan.base_weights,
        plan.compute_dtype,
        trainable,
        total,
        100 * trainable / max(total, 1),
    )
    return peft_model


@contextmanager
def peft_without_deprecation_noise() -> Iterator[None]:
    """peft 0.21 asks transformers 5 for `is_gradient_checkpointing`, deprecated there."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def linear_layer_names(model: torch.nn.Module) -> list[str]:
    """Distinct names (last component) of the linear layers: what targetModules can list."""
    import torch

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in (
            "Linear4bit",
            "Linear8bitLt",
        ):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _base_dtype(plan: TrainPlan) -> torch.dtype:
    # int8 layers keep their own dtype; the rest of the model follows the compute dtype.
    return torch_dtype(plan.compute_dtype if plan.base_weights == "int8" else plan.base_weights)
