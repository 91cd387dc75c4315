"""The training plan: device, precision, optimizer and rejections, for each kind of machine."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.v1alpha1 import TuningJobSpec
from kubetune.trainer.errors import InvalidConfigError, TrainerError
from kubetune.trainer.plan import Hardware, make_plan

CPU = Hardware(cuda_devices=0, bitsandbytes=True)
CPU_WITHOUT_BNB = Hardware(cuda_devices=0, bitsandbytes=False)
AMPERE_X4 = Hardware(cuda_devices=4, cuda_bf16=True, bitsandbytes=True, name="A100")
TURING = Hardware(cuda_devices=1, cuda_bf16=False, bitsandbytes=True, name="T4")


def spec(**overrides: Any) -> TuningJobSpec:
    body: dict[str, Any] = {
        "model": {"source": "s3://models/tiny/"},
        "dataset": {"source": "s3://data/train.jsonl"},
        "output": {"destination": "s3://out/run/"},
    }
    body.update(overrides)
    return TuningJobSpec.model_validate(body)


def test_qlora_on_a_bf16_gpu_uses_nf4_bf16_and_the_paged_8bit_optimizer() -> None:
    plan = make_plan(spec(), AMPERE_X4)
    assert (plan.device_type, plan.world_size, plan.backend) == ("cuda", 1, "nccl")
    assert (plan.base_weights, plan.compute_dtype, plan.optimizer) == (
        "nf4",
        "bf16",
        "paged-adamw-8bit",
    )
    assert plan.gradient_checkpointing


def test_several_gpus_train_data_parallel_one_process_each() -> None:
    plan = make_plan(spec(resources={"gpus": 4}), AMPERE_X4)
    assert (plan.world_size, plan.backend, plan.distributed) == (4, "nccl", True)


def test_more_gpus_than_visible_is_a_retryable_node_problem_not_a_spec_error() -> None:
    with pytest.raises(TrainerError, match="only 4 CUDA device") as caught:
        make_plan(spec(resources={"gpus": 8}), AMPERE_X4)
    assert not isinstance(caught.value, InvalidConfigError)


def test_older_gpus_compute_in_fp16_and_reject_bf16() -> None:
    assert make_plan(spec(), TURING).compute_dtype == "fp16"
    with pytest.raises(
        InvalidConfigError, match=r"computeDtype: bf16 is not supported by this GPU \(T4\)"
    ):
        make_plan(spec(method={"computeDtype": "bf16"}), TURING)


def test_cpu_trains_in_fp32_with_adamw_and_says_why_when_gpus_were_asked_for() -> None:
    plan = make_plan(spec(), CPU)
    assert (plan.device_type, plan.compute_dtype, plan.optimizer, plan.backend) == (
        "cpu",
        "fp32",
        "adamw",
        "gloo",
    )
    assert any("no CUDA device" in note for note in plan.notes)


def test_gpus_on_a_machine_without_cuda_become_gloo_cpu_processes() -> None:
    plan = make_plan(spec(resources={"gpus": 2}), CPU)
    assert (plan.device_type, plan.world_size, plan.backend) == ("cpu", 2, "gloo")


def test_zero_gpus_is_one_cpu_process_without_notes() -> None:
    plan = make_plan(spec(resources={"gpus": 0}), CPU)
    assert (plan.world_size, plan.notes) == (1, ())


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ({"type": "lora"}, "fp32"),
        ({"type": "lora", "baseWeights": "int8"}, "int8"),
        ({"type": "lora", "baseWeights": "bf16"}, "bf16"),
        ({"type": "lora", "baseWeights": "fp32"}, "fp32"),
    ],
)
def test_lora_base_weights_on_cpu(method: dict[str, Any], expected: str) -> None:
    plan = make_plan(spec(method=method, resources={"gpus": 0}), CPU)
    assert plan.base_weights == expected
    assert plan.quantized == (expected == "int8")


def test_lora_auto_base_weights_follow_the_gpu_compute_dtype() -> None:
    assert make_plan(spec(method={"type": "lora"}), AMPERE_X4).base_weights == "bf16"
    assert make_plan(spec(method={"type": "lora"}), TURING).base_weights == "fp16"


@pytest.mark.parametrize(
    ("overrides", "hardware", "message"),
    [
        ({"method": {"type": "qlora"}}, CPU_WITHOUT_BNB, r"method.type: qlora .* use type: lora"),
        (
            {"method": {"type": "lora", "baseWeights": "int8"}},
            CPU_WITHOUT_BNB,
            r"baseWeights: int8 needs bitsandbytes",
        ),
        (
            {"method": {"type": "lora", "baseWeights": "fp16"}},
            CPU,
            r"baseWeights: fp16 needs a CUDA GPU",
        ),
        ({"method": {"computeDtype": "fp16"}}, CPU, r"computeDtype: fp16 needs a CUDA GPU"),
        (
            {"training": {"optimizer": "paged-adamw-8bit"}},
            CPU,
            r"optimizer: paged-adamw-8bit .* needs a CUDA GPU",
        ),
        (
            {"method": {"type": "lora"}, "training": {"optimizer": "paged-adamw-8bit"}},
            Hardware(cuda_devices=1, cuda_bf16=True, bitsandbytes=False),
            r"paged-adamw-8bit needs bitsandbytes",
        ),
    ],
)
def test_impossible_combinations_are_rejected_with_the_field_and_a_fix(
    overrides: dict[str, Any], hardware: Hardware, message: str
) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        make_plan(spec(resources={"gpus": 1}, **overrides), hardware)


def test_the_probe_sees_this_machine() -> None:
    import torch

    hardware = Hardware.probe()
    # CI has no GPU; a lent GPU machine has some. Either way the probe agrees with torch
    # (`>= 0` held by construction; this can fail).
    expected = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert hardware.cuda_devices == expected
    assert (hardware.name == "cpu") == (expected == 0)
    assert hardware.bitsandbytes, (
        "bitsandbytes' native library should load here (CPU or CUDA build)"
    )
