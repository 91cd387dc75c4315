"""`kubetune status/wait/plot`'s pure parts: the status in words, exit codes, curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubetune.cli import main
from kubetune.client.curves import CurveError, parse_metrics, read_metrics, sparkline, summary
from kubetune.client.view import WaitExit, describe, newest_pod, outcome

pytestmark = pytest.mark.unit

RUNNING = {
    "metadata": {"name": "dolly", "namespace": "team-a"},
    "spec": {"output": {"destination": "s3://adapters/dolly/"}},
    "status": {
        "phase": "Running",
        "reason": "Training",
        "message": "trainer pod dolly-x is running on node gpu-1",
        "jobName": "dolly",
        "startTime": "2026-01-01T00:00:00Z",
        "progress": {
            "step": 120,
            "totalSteps": 400,
            "summary": "120/400 (30%)",
            "loss": "1.2345",
            "evalLoss": "1.3000",
            "eta": "2026-01-01T01:00:00Z",
            "tokensPerSecond": 5120,
        },
    },
}


def test_status_in_words_for_a_running_job() -> None:
    rows = dict(line.split(":", 1) for line in describe(RUNNING).splitlines())
    rows = {k: v.strip() for k, v in rows.items()}
    assert rows["Name"] == "team-a/dolly" and rows["Phase"] == "Running"
    assert rows["Reason"] == "Training" and rows["Progress"] == "120/400 (30%)"
    assert rows["Loss"] == "train 1.2345, eval 1.3000"
    assert rows["ETA"] == "2026-01-01T01:00:00Z"
    assert rows["Output"] == "s3://adapters/dolly/"


def test_status_of_a_failure_gives_reason_and_message_and_a_fresh_job_says_it_is_unseen() -> None:
    failed = {
        "metadata": {"name": "x"},
        "status": {"phase": "Failed", "reason": "BadData", "message": "data.jsonl:7: not JSON"},
    }
    assert "BadData" in describe(failed) and "data.jsonl:7" in describe(failed)
    assert "not seen by the operator yet" in describe({"metadata": {"name": "new"}})


def test_wait_outcomes() -> None:
    assert outcome({"status": {"phase": "Succeeded"}}) is WaitExit.SUCCEEDED
    assert outcome({"status": {"phase": "Failed"}}) is WaitExit.FAILED
    assert outcome(RUNNING) is None and outcome({}) is None
    assert [int(c) for c in WaitExit] == [0, 1, 3, 4]


def test_logs_follow_the_newest_pod() -> None:
    pods = [
        {"metadata": {"name": "a", "creationTimestamp": "2026-01-01T00:00:00Z"}},
        {"metadata": {"name": "b", "creationTimestamp": "2026-01-01T00:05:00Z"}},
    ]
    assert newest_pod(pods)["metadata"]["name"] == "b"  # type: ignore[index]
    assert newest_pod([]) is None


METRICS = [
    {"kind": "train", "step": 10, "loss": 3.0, "learning_rate": 1e-4},
    {"kind": "train", "step": 20, "loss": 2.0, "learning_rate": 2e-4},
    {"kind": "eval", "step": 20, "eval_loss": 2.5},
    {"kind": "train", "step": 30, "loss": 1.0, "learning_rate": 1e-4},
    {"kind": "summary", "step": 30, "train_loss": 2.0},
]


def test_metrics_become_curves_and_sparklines() -> None:
    curves = parse_metrics([json.dumps(r) for r in METRICS], "m.jsonl")
    assert curves.train_loss == [(10, 3.0), (20, 2.0), (30, 1.0)]
    assert curves.eval_loss == [(20, 2.5)]
    assert curves.learning_rate == [(10, 1e-4), (20, 2e-4), (30, 1e-4)]
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert sparkline([1.0] * 5) == "▁▁▁▁▁"
    assert len(sparkline([float(i) for i in range(1000)], width=40)) == 40
    text = summary(curves)
    assert "train loss" in text and "3 → 1 (steps 10 to 30)" in text


def test_bad_metrics_name_the_line() -> None:
    with pytest.raises(CurveError, match=r"m.jsonl:2: not JSON"):
        parse_metrics(['{"kind":"train","step":1,"loss":1}', "{oops"], "m.jsonl")
    with pytest.raises(CurveError, match="No such file"):
        read_metrics("/nonexistent/metrics.jsonl")


def test_plot_a_local_metrics_file_writes_a_png_and_prints_sparklines(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in METRICS))
    png = tmp_path / "out" / "loss.png"
    result = CliRunner().invoke(main, ["plot", str(metrics), "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert "train loss" in result.output and "eval loss" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert CliRunner().invoke(main, ["plot", str(empty), "--no-png"]).exit_code == 1


def test_completion_script_is_available() -> None:
    result = CliRunner().invoke(
        main, [], env={"_KUBETUNE_COMPLETE": "bash_source"}, prog_name="kubetune"
    )
    assert "_kubetune_completion" in result.output
