"""`kubetune train` as the pod runs it: exit codes, termination messages, signals, metrics, DDP.

The trainer runs as a real subprocess (`python -m kubetune train ...`), receives real
SIGTERM and SIGKILL, and is scraped over HTTP while it trains.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kubetune.api.contract import SPEC_ENV, TERMINATION_LOG_ENV, TerminationMessage
from tests.support.training import manifest, write_manifest, write_records

ROOT = Path(__file__).resolve().parents[2]


class Trainer:
    """A `kubetune train` subprocess whose JSON log lines can be awaited."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kubetune", "train", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            record = _json(line)
            if record is not None and predicate(record):
                return record
        raise AssertionError("log line not seen; stderr so far:\n" + "".join(self.seen[-40:]))

    def finish(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout=timeout)
        time.sleep(0.2)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code

    @property
    def log(self) -> list[dict[str, Any]]:
        return [r for r in map(_json, self.seen) if r is not None]


def _json(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def setup_run(
    tmp_path: Path, model: Path, data: Path, **overrides: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    document = manifest(str(model), str(data), str(tmp_path / "out"), **overrides)
    env = {
        TERMINATION_LOG_ENV: str(tmp_path / "termination-log"),
        "KUBETUNE_SCRATCH_DIR": str(tmp_path / "scratch"),
    }
    return document, env


def termination(tmp_path: Path) -> TerminationMessage:
    message = TerminationMessage.from_json((tmp_path / "termination-log").read_text())
    assert message is not None
    return message


def metric_steps(tmp_path: Path) -> list[int]:
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == "train"]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        name: float(value)
        for name, _, value in (
            line.rpartition(" ") for line in text.splitlines() if line and line[0] != "#"
        )
    }


STEPS = 60


@pytest.mark.slow
def test_sigterm_checkpoints_exits_75_and_the_next_attempt_finishes(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    document, env = setup_run(
        tmp_path,
        tiny_model,
        synthetic_data,
        training={
            "maxSteps": STEPS,
            "checkpointEvery": 25,
            "evalEvery": 30,
            "logEvery": 1,
            "batchSize": 1,
            "gradientAccumulation": 1,
        },
    )
    env[SPEC_ENV] = json.dumps(document)  # the pod's way: the manifest in the environment
    trainer = Trainer(["--from-env", "--metrics-port", "0"], env)
    port = int(
        trainer.wait_for(lambda r: r["message"].startswith("serving Prometheus"))[
            "message"
        ].split()[-1]
    )
    trainer.wait_for(lambda r: r.get("kind") == "train" and r["step"] >= 5)

    samples = scrape(port)  # live, mid-run
    assert samples['kubetune_trainer_phase{phase="training"}'] == 1
    assert samples["kubetune_trainer_total_steps"] == STEPS
    assert 5 <= samples["kubetune_trainer_step"] < STEPS
    assert samples["kubetune_trainer_tokens_total"] > 0 and samples["kubetune_trainer_loss"] > 0

    trainer.process.send_signal(signal.SIGTERM)
    assert trainer.finish() == 75
    message = termination(tmp_path)
    assert message.reason == "Preempted" and "SIGTERM" in message.message
    stopped_at = int(re.search(r"step-(\d+)", message.checkpoint or "").group(1))  # type: ignore[union-attr]
    assert 5 <= stopped_at < STEPS
    assert (tmp_path / "out" / "checkpoints" / f"step-{stopped_at:06d}" / "COMPLETE").exists()
    assert all(
        r["level"] and r["message"] and r["rank"] == 0 for r in trainer.log
    )  # JSON logs: no terminal

    again = Trainer(["--from-env", "--metrics-port", "-1"], env)
    assert again.finish() == 0
    assert any(
        r["message"].startswith(f"resumed from {tmp_path}/out/checkpoints/step-{stopped_at:06d}")
        for r in again.log
    )
    done = termination(tmp_path)
    assert (done.reason, done.adapter, done.metrics["steps"]) == (
        "Succeeded",
        f"{tmp_path}/out/adapter/",
        STEPS,
    )
    assert metric_steps(tmp_path) == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_after_sigkill_the_next_attempt_resumes_from_the_last_complete_checkpoint(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    document, env = setup_run(
        tmp_path,
        tiny_model,
        synthetic_data,
        training={
            "maxSteps": STEPS,
            "checkpointEvery": 10,
            "evalEvery": 100,
            "logEvery": 1,
            "batchSize": 1,
            "gradientAccumulation": 1,
        },
    )
    path = write_manifest(tmp_path / "job.yaml", document)
    trainer = Trainer(["-f", str(path), "--metrics-port", "-1"], env)
    trainer.wait_for(
        lambda r: r["message"].startswith("checkpoint saved") and "step-000020" in r["message"]
    )
    trainer.process.kill()
    assert trainer.finish() == -signal.SIGKILL
    complete = sorted(p.parent.name for p in (tmp_path / "out" / "checkpoints").glob("*/COMPLETE"))
    latest = complete[-1]
    # As if the kill had landed mid-upload of the next checkpoint: files, no marker.
    partial = tmp_path / "out" / "checkpoints" / f"step-{int(latest[5:]) + 10:06d}"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"half a file")

    again = Trainer(["-f", str(path), "--metrics-port", "-1"], env)
    assert again.finish() == 0, "".join(again.seen[-30:])
    assert any(
        r["message"].startswith(f"resumed from {tmp_path}/out/checkpoints/{latest}/")
        for r in again.log
    )
    assert termination(tmp_path).metrics["steps"] == STEPS
    assert metric_steps(tmp_path) == list(range(1, STEPS + 1))
    assert not partial.exists() or (partial / "COMPLETE").exists()  # replaced or pruned, never used


def test_an_invalid_manifest_exits_78_with_file_line_and_field(tmp_path: Path) -> None:
    document = manifest(
        "model/", "data.jsonl", str(tmp_path / "out"), method={"type": "full-finetune"}
    )
    path = write_manifest(tmp_path / "job.yaml", document)
    env = {**os.environ, TERMINATION_LOG_ENV: str(tmp_path / "termination-log")}
    result = subprocess.run(
        [sys.executable, "-m", "kubetune", "train", "-f", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 78, result.stderr
    assert re.search(
        rf"{path}:\d+: spec.method.type: input should be 'qlora', 'lora', 'full' or 'prompt-tuning'",
        result.stderr,
    )
    message = termination(tmp_path)
    assert message.reason == "InvalidSpec" and "spec.method.type" in message.message


def test_an_unwritable_output_exits_77_before_training(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    document = manifest(str(tiny_model), str(synthetic_data), str(blocker / "out"))
    env = {
        **os.environ,
        TERMINATION_LOG_ENV: str(tmp_path / "termination-log"),
        SPEC_ENV: json.dumps(document),
    }
    result = subprocess.run(
        [sys.executable, "-m", "kubetune", "train", "--from-env", "--metrics-port", "-1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 77, result.stderr
    assert "error (StorageAccess)" in result.stderr
    assert termination(tmp_path).reason == "StorageAccess"
    assert '"phase"' not in result.stderr or "training" not in result.stderr


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(log))
    monkeypatch.setenv("KUBETUNE_SCRATCH_DIR", str(tmp_path / "scratch"))
    return log


@pytest.mark.usefixtures("cli_env")
def test_bad_data_exits_65(tiny_model: Path, tmp_path: Path) -> None:
    from kubetune.cli import main

    empty = write_records(tmp_path / "empty.jsonl", [])
    path = write_manifest(
        tmp_path / "job.yaml", manifest(str(tiny_model), str(empty), str(tmp_path / "out"))
    )
    result = CliRunner().invoke(main, ["train", "-f", str(path), "--metrics-port", "-1"])
    assert result.exit_code == 65, result.output
    assert termination(tmp_path).reason == "BadData"


@pytest.mark.usefixtures("cli_env")
def test_an_unexpected_error_exits_1_with_its_type_in_the_message(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.cli import main
    from kubetune.trainer import recipe

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(recipe, "train", broken)
    path = write_manifest(
        tmp_path / "job.yaml", manifest(str(tiny_model), str(synthetic_data), str(tmp_path / "out"))
    )
    result = CliRunner().invoke(main, ["train", "-f", str(path), "--metrics-port", "-1"])
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)
    message = termination(tmp_path)
    assert (message.reason, message.message) == (
        "TrainerError",
        "RuntimeError: CUDA error: an illegal memory access was encountered",
    )


@pytest.mark.usefixtures("cli_env")
def test_success_exits_0_with_the_adapter_and_metrics(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    from kubetune.cli import main

    path = write_manifest(
        tmp_path / "job.yaml",
        manifest(
            str(tiny_model), str(synthetic_data), str(tmp_path / "out"), training={"maxSteps": 2}
        ),
    )
    result = CliRunner().invoke(
        main, ["train", "-f", str(path), "--metrics-port", "-1", "--log-format", "text"]
    )
    assert result.exit_code == 0, result.output
    message = termination(tmp_path)
    assert message.reason == "Succeeded" and message.adapter == f"{tmp_path}/out/adapter/"
    assert {"eval_loss", "eval_perplexity", "train_loss", "steps"} <= set(message.metrics)


def test_exactly_one_source_of_the_manifest() -> None:
    from kubetune.cli import main

    result = CliRunner().invoke(main, ["train"])
    assert result.exit_code == 2 and "exactly one of -f FILE or --from-env" in result.output


@pytest.mark.slow
def test_two_processes_train_the_same_adapter_as_one_with_twice_the_accumulation(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from kubetune.api.manifest import parse_tuningjob
    from kubetune.trainer import recipe

    training = {
        "maxSteps": 3,
        "batchSize": 1,
        "checkpointEvery": 3,
        "evalEvery": 3,
        "learningRate": 1e-2,
    }
    one = manifest(
        str(tiny_model),
        str(synthetic_data),
        str(tmp_path / "one"),
        training={**training, "gradientAccumulation": 4},
    )
    recipe.train(
        parse_tuningjob(one), recipe.RunOptions(scratch=tmp_path / "s1", metrics_port=None)
    )

    two = manifest(
        str(tiny_model),
        str(synthetic_data),
        str(tmp_path / "two"),
        training={**training, "gradientAccumulation": 2},
        resources={"gpus": 2},  # no CUDA here: two gloo CPU processes under torchrun's agent
    )
    env = {
        TERMINATION_LOG_ENV: str(tmp_path / "termination-log"),
        "KUBETUNE_SCRATCH_DIR": str(tmp_path / "s2"),
        SPEC_ENV: json.dumps(two),
    }
    trainer = Trainer(["--from-env", "--metrics-port", "0"], env)
    assert trainer.finish() == 0, "".join(trainer.seen[-40:])
    assert {r["rank"] for r in trainer.log} == {0, 1}
    message = termination(tmp_path)
    assert message.reason == "Succeeded" and message.metrics["steps"] == 3

    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    import torch

    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=name)
