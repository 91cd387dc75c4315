"""`kubetune render`: the operator's Job, offline, and errors that point at the file."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from kubetune.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_render_prints_the_job(monkeypatch) -> None:
    monkeypatch.setenv("KUBETUNE_OPERATOR_TRAINER_IMAGE", "registry.local/trainer:dev")
    result = CliRunner().invoke(main, ["render", "-f", str(ROOT / "examples" / "dolly-qlora.yaml")])
    assert result.exit_code == 0, result.output
    job = yaml.safe_load(result.output)
    assert job["kind"] == "Job" and job["metadata"]["name"] == "dolly-llama-qlora"
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/trainer:dev"


def test_render_rejects_what_the_operator_would_reject(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "dolly-qlora.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        text.replace("destination: s3://adapters/dolly-llama-qlora/", "destination: ./adapters")
    )
    result = CliRunner().invoke(main, ["render", "-f", str(bad)])
    assert result.exit_code == 78
    assert (
        f"{bad}: spec.output.destination: use an s3://bucket/prefix URI in a cluster"
        in result.output
    )


def test_render_reports_schema_errors_with_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "examples" / "dolly-qlora.yaml")
        .read_text()
        .replace("learningRate: 2.0e-4", "learningRate: -3")
    )
    result = CliRunner().invoke(main, ["render", "-f", str(bad)])
    assert result.exit_code == 78
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "learningRate" in t)
    assert f"{bad}:{line}: spec.training.learningRate" in result.output


def test_crd_command_prints_the_committed_crd() -> None:
    result = CliRunner().invoke(main, ["crd"])
    assert result.exit_code == 0
    assert result.output == (ROOT / "crds" / "tuningjobs.kubetune.dev.yaml").read_text()


def test_every_example_renders() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 4
    for path in examples:
        result = CliRunner().invoke(main, ["render", "-f", str(path)])
        assert result.exit_code == 0, f"{path}: {result.output}"
