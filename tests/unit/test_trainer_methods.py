"""Methods in the API and the plan: full, prompt-tuning, DoRA/rsLoRA, initAdapter checks."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubetune.api.v1alpha1 import MethodSpec, TuningJobSpec
from kubetune.trainer.adapters import check_adapter_config
from kubetune.trainer.errors import InvalidConfigError
from kubetune.trainer.plan import Hardware, make_plan

CPU = Hardware(cuda_devices=0, bitsandbytes=True)
TURING = Hardware(cuda_devices=1, cuda_bf16=False, bitsandbytes=True, name="T4")


def spec(method: dict[str, Any], **overrides: Any) -> TuningJobSpec:
    body: dict[str, Any] = {
        "model": {"source": "s3://models/tiny/"},
        "dataset": {"source": "s3://data/train.jsonl"},
        "output": {"destination": "s3://out/run/"},
        "method": method,
    }
    body.update(overrides)
    return TuningJobSpec.model_validate(body)


def test_full_trains_in_the_compute_dtype_and_keeps_fp32_master_weights_under_fp16() -> None:
    assert make_plan(spec({"type": "full"}), CPU).base_weights == "fp32"
    plan = make_plan(spec({"type": "full"}), TURING)  # fp16 compute: weights stay fp32
    assert (plan.base_weights, plan.compute_dtype) == ("fp32", "fp16")


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"type": "full", "baseWeights": "int8"}, "baseWeights: int8 conflicts with type: full"),
        ({"type": "full", "initAdapter": "s3://a/b/"}, "type: full trains the whole model"),
        ({"type": "prompt-tuning", "mergeAdapter": True}, "has no LoRA weights to merge"),
        (
            {"type": "prompt-tuning", "promptTuning": {"init": "text"}},
            "set initText together with init: text",
        ),
        ({"type": "dora"}, "type"),
    ],
)
def test_impossible_methods_are_rejected_with_the_field_to_change(
    method: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(method, training={"packing": False})


def test_prompt_tuning_needs_unpacked_rows() -> None:
    with pytest.raises(ValidationError, match=r"set training\.packing: false"):
        spec({"type": "prompt-tuning"})
    assert spec({"type": "prompt-tuning"}, training={"packing": False}).method.prompt_tuning


def test_dora_and_rslora_are_peft_switches_on_lora_and_qlora() -> None:
    from kubetune.trainer.model import peft_config

    for kind in ("lora", "qlora"):
        method = spec({"type": kind, "lora": {"useDora": True, "useRslora": True}}).method
        config = peft_config(method, model_folder=None)  # type: ignore[arg-type]
        assert (config.use_dora, config.use_rslora) == (True, True)
    plain = peft_config(MethodSpec(), model_folder=None)  # type: ignore[arg-type]
    assert (plain.use_dora, plain.use_rslora) == (False, False)


LORA_CONFIG = {
    "peft_type": "LORA",
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "v_proj"],
    "use_dora": False,
    "use_rslora": False,
}


def test_an_adapter_config_that_fits_passes_and_unset_fields_take_the_adapters_values() -> None:
    check_adapter_config(LORA_CONFIG, MethodSpec(type="lora"), "s3://a/adapter/")
    explicit = MethodSpec.model_validate(
        {"type": "qlora", "lora": {"r": 8, "alpha": 16, "targetModules": ["v_proj", "q_proj"]}}
    )
    check_adapter_config(LORA_CONFIG, explicit, "s3://a/adapter/")


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"type": "prompt-tuning"}, "is a LORA adapter, but method.type prompt-tuning"),
        ({"type": "lora", "lora": {"r": 4}}, "lora.r 4 vs the adapter's 8"),
        ({"type": "lora", "lora": {"useDora": True}}, "lora.useDora True vs the adapter's False"),
        (
            {"type": "lora", "lora": {"targetModules": ["q_proj"]}},
            "lora.targetModules ['q_proj'] vs the adapter's ['q_proj', 'v_proj']",
        ),
    ],
)
def test_an_adapter_config_that_does_not_fit_names_the_field(
    method: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidConfigError) as caught:
        check_adapter_config(LORA_CONFIG, MethodSpec.model_validate(method), "s3://a/adapter/")
    assert str(caught.value).startswith("spec.method.initAdapter: ")
    assert message in str(caught.value)


def test_a_prompt_tuning_adapter_checks_its_virtual_tokens() -> None:
    config = {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 20}
    check_adapter_config(config, MethodSpec(type="prompt-tuning"), "a/")
    with pytest.raises(InvalidConfigError, match="virtualTokens 8 vs the adapter's 20"):
        check_adapter_config(
            config,
            MethodSpec.model_validate(
                {"type": "prompt-tuning", "promptTuning": {"virtualTokens": 8}}
            ),
            "a/",
        )
