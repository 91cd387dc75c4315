"""The Prometheus endpoint serves the metric names the operator reads."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from kubetune.api.trainer_metrics import TRAINER_PHASES, TrainerMetric
from kubetune.trainer.telemetry import Telemetry

# The contract with the operator (kubetune.api.trainer_metrics, docs/trainer.md): these exact names.
CONTRACT_METRICS = [
    "kubetune_trainer_step",
    "kubetune_trainer_total_steps",
    "kubetune_trainer_epoch",
    "kubetune_trainer_loss",
    "kubetune_trainer_eval_loss",
    "kubetune_trainer_learning_rate",
    "kubetune_trainer_grad_norm",
    "kubetune_trainer_tokens_total",
    "kubetune_trainer_tokens_per_second",
    "kubetune_trainer_packing_efficiency",
    'kubetune_trainer_phase{phase="training"}',
    'kubetune_trainer_s3_bytes_total{direction="upload"}',
    'kubetune_trainer_s3_bytes_total{direction="download"}',
]


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_the_endpoint_serves_the_contract_metrics_and_one_phase_at_a_time(tmp_path: Path) -> None:
    telemetry = Telemetry(tmp_path / "metrics.jsonl")
    port = telemetry.serve(0)
    assert port
    try:
        telemetry.set_phase("downloading")
        telemetry.set_phase("training")
        telemetry.step.set(3)
        telemetry.tokens.inc(1200)
        telemetry.add_s3_bytes("download", 4096)
        samples = scrape(port)
    finally:
        telemetry.close()
    for name in CONTRACT_METRICS:
        assert name in samples, name
    phases = {p: samples[f'kubetune_trainer_phase{{phase="{p}"}}'] for p in TRAINER_PHASES}
    assert phases == {p: float(p == "training") for p in TRAINER_PHASES}
    assert samples["kubetune_trainer_step"] == 3
    assert samples["kubetune_trainer_tokens_total"] == 1200
    assert samples['kubetune_trainer_s3_bytes_total{direction="download"}'] == 4096


def test_a_busy_port_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    first = Telemetry(None)
    port = first.serve(0)
    try:
        assert port is not None
        assert Telemetry(None).serve(port) is None
    finally:
        first.close()


def test_metrics_jsonl_is_truncated_to_the_resumed_step(tmp_path: Path) -> None:
    telemetry = Telemetry(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3, 4):
        telemetry.write_record({"kind": "train", "step": step, "loss": 1.0 / step})
    telemetry.truncate_records_after(2)
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2]


def test_ranks_other_than_zero_record_nothing(tmp_path: Path) -> None:
    telemetry = Telemetry(tmp_path / "metrics.jsonl", enabled=False)
    telemetry.write_record({"step": 1})
    assert telemetry.serve(0) is None
    assert not (tmp_path / "metrics.jsonl").exists()


def test_the_trainer_registers_exactly_the_metrics_the_contract_names(tmp_path: Path) -> None:
    telemetry = Telemetry(tmp_path / "metrics.jsonl")
    registered = {family.name for family in telemetry.registry.collect()}
    named = {value for key, value in vars(TrainerMetric).items() if key.isupper()}
    assert registered == named
