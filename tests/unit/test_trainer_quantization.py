"""bitsandbytes on CPU: the import notice is demoted, and evaluation does not corrupt training."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kubetune.api.v1alpha1 import LoraSpec, TuningJobSpec
from kubetune.trainer.model import load_model
from kubetune.trainer.plan import Hardware, make_plan
from kubetune.trainer.quantization import _HUB_KERNEL_NOTICE, quiet_bitsandbytes_import


def test_the_hub_kernel_notice_becomes_a_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    quiet_bitsandbytes_import()
    quiet_bitsandbytes_import()  # idempotent: one filter
    noisy = logging.getLogger("bitsandbytes.backends.cpu.ops")
    assert len(noisy.filters) == 1
    with caplog.at_level(logging.DEBUG):
        noisy.warning(
            "%s: %s. Please make sure ...", _HUB_KERNEL_NOTICE, "No module named 'kernels'"
        )
        noisy.warning("something else")
    messages = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert not any(name == noisy.name and _HUB_KERNEL_NOTICE in text for name, _, text in messages)
    assert ("bitsandbytes.backends.cpu.ops", "WARNING", "something else") in messages
    assert any(level == "DEBUG" and "native CPU kernel" in text for _, level, text in messages)


def test_importing_bitsandbytes_through_the_trainer_prints_no_hub_noise() -> None:
    code = "from kubetune.trainer.quantization import quiet_bitsandbytes_import; quiet_bitsandbytes_import(); import bitsandbytes"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert _HUB_KERNEL_NOTICE not in result.stderr


def gradients(model: torch.nn.Module, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    return {
        n: p.grad.clone()
        for n, p in model.named_parameters()
        if p.requires_grad and p.grad is not None
    }


def test_an_evaluation_forward_leaves_4bit_training_gradients_unchanged(tiny_model: Path) -> None:
    # bitsandbytes 0.50 on AVX512-BF16 CPUs repacks 4-bit weights in eval mode and then
    # trains through an op without autograd: gradients into earlier layers go wrong.
    # (On other CPUs and on GPUs that path does not exist and this passes trivially.)
    spec = TuningJobSpec.model_validate(
        {
            "model": {"source": "m"},
            "dataset": {"source": "d"},
            "output": {"destination": "o/"},
            "resources": {"gpus": 0},
        }
    )
    plan = make_plan(spec, Hardware.probe())
    model = load_model(
        tiny_model, "m", plan, LoraSpec(r=4, alpha=8, dropout=0.0), torch.device("cpu"), seed=0
    )
    with torch.no_grad():  # non-zero B, so gradients flow into every adapter
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    input_ids = torch.randint(5, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    before = gradients(model, input_ids)
    model.eval()
    with torch.no_grad():
        model(input_ids=input_ids)
    after = gradients(model, input_ids)
    assert before.keys() == after.keys() and before
    for name in before:
        torch.testing.assert_close(after[name], before[name], msg=name)
