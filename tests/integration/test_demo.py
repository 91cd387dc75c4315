"""`make demo` keeps working: the script end to end, with few steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_demo_runs_end_to_end_through_s3(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hack.demo",
            "--workdir",
            str(tmp_path / "demo"),
            "--steps",
            "4",
            "--pretrain-steps",
            "3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "[5/5] adapter: s3://kubetune-demo/runs/dolly-tiny/adapter/" in out
    assert "validation loss" in out and "before:" in out and "after:" in out
    assert (tmp_path / "demo" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "adapter" / "adapter_model.safetensors").exists()
