"""The (quantized) base model and its LoRA adapters (the tokenizer: tokenizer.py).

`load_model` turns a model folder and a `TrainPlan` into what the loop trains: a
`peft.PeftModel` whose only trainable parameters are the adapters, on the plan's
device. Problems a user can fix (target modules the model does not have) become
`InvalidConfigError`s that name the field.

What trains depends on `spec.method.type`: LoRA adapters (qlora, lora; with DoRA and
rsLoRA through peft's own `use_dora`/`use_rslora`), virtual-token embeddings
(prompt-tuning, peft's `PromptTuningConfig`), or every weight (full: the plain
transformers model, no peft). `method.initAdapter` loads an existing adapter instead
of fresh weights (`kubetune.trainer.adapters` checks it fits first).

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

from kubetune.api.v1alpha1 import LoraSpec, MethodSpec
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
    folder: Path,
    source: str,
    plan: TrainPlan,
    method: MethodSpec | LoraSpec,
    device: torch.device,
    seed: int,
    *,
    init_adapter: Path | None = None,
) -> PeftModel | torch.nn.Module:
    """Base model in the plan's precision on `device`, with what `method` trains.

    LoRA and prompt tuning: the base frozen, fresh adapters (or those in
    `init_adapter`, trainable). full: the plain model, every parameter trainable.
    A bare `LoraSpec` means LoRA of that shape (the precision comes from the plan).
    """
    quiet_bitsandbytes_import()
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(method, LoraSpec):
        method = MethodSpec(type="lora", lora=method)

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
        model.requires_grad_(method.type == "full")
    if plan.gradient_checkpointing:
        # Non-reentrant checkpointing needs no inputs that require grad and works with DDP.
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
        model.config.use_cache = False

    if method.type == "full":
        _log_trainable(model, model, plan)
        return model

    torch.manual_seed(seed)  # the adapters' initialisation
    if init_adapter is not None:
        from kubetune.trainer.adapters import load_init_adapter

        peft_model = load_init_adapter(model, init_adapter, method, source)
    else:
        try:
            with peft_without_deprecation_noise():
                peft_model = get_peft_model(model, peft_config(method, folder))
        except ValueError as e:
            if "not found in the base model" not in str(e) and "Target modules" not in str(e):
                raise
            raise InvalidConfigError(
                f"spec.method.lora.targetModules: {method.lora.target_modules} matches no layer of "
                f"this model; its linear layers are: {', '.join(linear_layer_names(model)) or 'none'}"
            ) from None
    _log_trainable(model, peft_model, plan)
    return peft_model


def peft_config(method: MethodSpec, model_folder: Path) -> Any:
    """peft's config for fresh adapters of `method` (qlora, lora or prompt-tuning)."""
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit

    if method.type == "prompt-tuning":
        tuning = method.prompt_tuning
        text = tuning.init == "text"
        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=tuning.virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=tuning.init_text if text else None,
            tokenizer_name_or_path=str(model_folder) if text else None,
        )
    lora = method.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=ALL_LINEAR
        if lora.target_modules == [ALL_LINEAR]
        else list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
    )


def is_peft_model(model: Any) -> bool:
    """An adapter model (saved as adapter_*), as opposed to a whole model (type full)."""
    from peft import PeftModel

    return isinstance(getattr(model, "module", model), PeftModel)


def _log_trainable(base: Any, model: Any, plan: TrainPlan) -> None:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info(
        "model loaded: %s (%s base weights, %s compute), %d trainable of %d parameters (%.2f%%)",
        type(base).__name__,
        plan.base_weights,
        plan.compute_dtype,
        trainable,
        total,
        100 * trainable / max(total, 1),
    )


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


# Whole-model weights in checkpoints (type full). safetensors' own save/load handle tied
# weights (an embedding shared with the output head is stored once) and check that
# every tensor is there with its shape.
FULL_WEIGHTS = "model.safetensors"


def save_full_weights(model: torch.nn.Module, folder: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(folder / FULL_WEIGHTS))


def load_full_weights(model: torch.nn.Module, folder: Path, device: torch.device) -> None:
    from safetensors.torch import load_model

    try:
        load_model(model, str(folder / FULL_WEIGHTS), strict=True, device=str(device))
    except RuntimeError as e:  # missing or unexpected keys, another shape
        raise InvalidConfigError(
            f"the checkpoint {folder.name} holds other weights than this model "
            f"({str(e).splitlines()[0][:300]}); use a new output.destination or delete its "
            "checkpoints/ to start over"
        ) from None
