"""`kubetune prepare`: outputs, and an exit code per kind of failure (the operator's contract)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from kubetune.api.contract import ExitCode
from kubetune.cli import main
from tests.support.data import DOLLY, write_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A model folder holding only a tokenizer: all `prepare` loads."""
    folder = tmp_path_factory.mktemp("model")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def run(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("KUBETUNE_SCRATCH_DIR", str(tmp_path / "scratch"))
    monkeypatch.chdir(tmp_path)  # without -o, prepare writes ./NAME-prepared/

    def invoke(dataset: dict, *args: str, model: str | None = None, training: dict | None = None):
        manifest = tmp_path / "job.yaml"
        manifest.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubetune.dev/v1alpha1",
                    "kind": "TuningJob",
                    "metadata": {"name": "trial"},
                    "spec": {
                        "model": {"source": model or str(model_dir)},
                        "dataset": dataset,
                        "training": training or {"maxSeqLength": 1024},
                        "output": {"destination": str(tmp_path / "out")},
                    },
                }
            )
        )
        return CliRunner().invoke(
            main, ["prepare", "-f", str(manifest), *args], catch_exceptions=False
        )

    return invoke


def test_prepare_writes_splits_and_report(run, tmp_path):
    result = run(
        {"source": str(DOLLY), "maxExamples": 200},
        "-o",
        str(tmp_path / "prepared"),
        "--report",
        str(tmp_path / "r.json"),
    )
    assert result.exit_code == 0, result.output
    assert "packing efficiency" in result.output
    for split in ("train", "validation"):
        table = pq.read_table(tmp_path / "prepared" / f"{split}.parquet")
        assert table.column_names == ["input_ids", "labels", "position_ids", "seq_lengths"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["examples"]["read"] == 1088 and report["packs"] > 0
    again = run({"source": str(DOLLY), "maxExamples": 200}, "-o", str(tmp_path / "prepared"))
    assert again.exit_code == 0 and "(from cache)" in again.output


@pytest.mark.parametrize(
    "content, words",
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": \n', ":2: invalid JSON"),
        ("", "the file is empty"),
        ('{"question": "a"}\n', "cannot tell the format from the columns ['question']"),
        ('{"messages": [{"role": "user", "content": "hi"}]}\n', "no assistant turn"),
    ],
)
def test_bad_data_exits_65(run, tmp_path, content, words):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    result = run({"source": str(data)})
    assert result.exit_code == ExitCode.BAD_DATA == 65
    assert "error (BadData)" in result.output and words in result.output


def test_oversized_input_exits_65_under_skip_too(run, tmp_path):
    # A 200 KiB CSV field: refused with file and line even under onInvalid: skip, where
    # it used to drop the rest of the file silently.
    rows = [f"q{i},a{i}" for i in range(1000)]
    rows[3] = "q3," + "x" * (200 * 1024)
    data = tmp_path / "data.csv"
    data.write_text("prompt,completion\n" + "\n".join(rows) + "\n")
    result = run({"source": str(data), "onInvalid": "skip"})
    assert result.exit_code == ExitCode.BAD_DATA
    assert f"{data}:5: a CSV field longer than 128 KiB" in result.output


def test_empty_after_filtering_exits_65(run, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p " * 400, "completion": "c"}])
    result = run({"source": str(data)}, training={"maxSeqLength": 64, "overlong": "drop"})
    assert result.exit_code == 65 and "no training example left" in result.output


def test_missing_source_exits_77(run, tmp_path):
    result = run({"source": str(tmp_path / "absent.jsonl")})
    assert result.exit_code == ExitCode.STORAGE_ACCESS == 77
    assert "no such file or folder" in result.output


@pytest.mark.parametrize(
    "dataset, model, words",
    [
        ({"template": "vicuna"}, None, "unknown template 'vicuna'"),
        ({}, "pvc://claim/llama", "reachable only inside the cluster"),
        ({"validation": {"fraction": 0.6}, "test": {"fraction": 0.5}}, None, "must be less than 1"),
    ],
)
def test_bad_config_exits_78(run, dataset, model, words):
    result = run({"source": str(DOLLY), **dataset}, model=model)
    assert result.exit_code == ExitCode.INVALID_CONFIG == 78
    assert words in result.output


def test_invalid_manifest_exits_78_with_the_field(run):
    result = run({"source": str(DOLLY), "onInvalid": "ignore"})
    assert result.exit_code == 78
    assert "spec.dataset.onInvalid" in result.output
