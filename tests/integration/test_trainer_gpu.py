"""QLoRA on a CUDA GPU: bf16 compute, paged 8-bit AdamW, resume with its 8-bit state.

Marked `gpu`: skipped where no CUDA device exists (CI). The CPU-runnable parts of this
path (plan decisions, 8-bit optimizer state in checkpoints, 4-bit layers) are tested
without the marker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api.manifest import parse_tuningjob
from kubetune.trainer import recipe
from kubetune.trainer.errors import Preempted
from kubetune.trainer.loop import TrainLoop
from tests.support.training import manifest

pytestmark = pytest.mark.gpu


def gpu_job(model: Path, data: Path, out: Path) -> Any:
    return parse_tuningjob(
        manifest(
            str(model),
            str(data),
            str(out),
            resources={"gpus": 1},
            training={"maxSteps": 6, "checkpointEvery": 2, "evalEvery": 3, "learningRate": 1e-2},
        )
    )


def test_qlora_on_a_gpu_trains_in_bf16_with_the_paged_8bit_optimizer(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    result = recipe.train(
        gpu_job(tiny_model, synthetic_data, tmp_path / "out"),
        recipe.RunOptions(scratch=tmp_path / "s", metrics_port=None),
    )
    plan = result.summary["plan"]
    assert (
        plan["device_type"] == "cuda"
        and plan["base_weights"] == "nf4"
        and plan["optimizer"] == "paged-adamw-8bit"
    )
    assert plan["compute_dtype"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert result.metrics["eval_loss"] < result.metrics["eval_loss_initial"]
    assert result.metrics["gpu_peak_memory_bytes"] > 0


def test_a_stopped_gpu_run_resumes_with_its_8bit_optimizer_state(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = gpu_job(tiny_model, synthetic_data, tmp_path / "out")
    original = TrainLoop._step

    def stop_in_step_4(self: TrainLoop, batches: list[dict[str, Any]]) -> Any:
        if self.progress.step + 1 == 4:
            self.stop.request("SIGTERM")
        return original(self, batches)

    with monkeypatch.context() as patch:
        patch.setattr(TrainLoop, "_step", stop_in_step_4)
        with pytest.raises(Preempted):
            recipe.train(job, recipe.RunOptions(scratch=tmp_path / "s1", metrics_port=None))
    result = recipe.train(job, recipe.RunOptions(scratch=tmp_path / "s2", metrics_port=None))
    assert result.metrics["steps"] == 6
