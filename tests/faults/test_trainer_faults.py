"""The trainer against faults, end to end: real QLoRA of a tiny model, real SeaweedFS
behind the fault proxy, real signals. Each test's docstring is its row in
docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.manifest import parse_tuningjob
from kubetune.trainer import recipe
from kubetune.trainer.errors import InvalidConfigError
from tests.faults.proxy import FaultProxy
from tests.ground.s3 import S3Endpoint
from tests.integration.test_trainer_cli import Trainer
from tests.support.training import manifest, write_manifest

OUTAGE_S = 30.0


def _upload_inputs(s3_env: S3Endpoint, bucket: str, model: Path, data: Path) -> tuple[str, str]:
    client = s3_env.client()
    for path in model.iterdir():
        client.upload_file(str(path), bucket, f"models/tiny/{path.name}")
    client.upload_file(str(data), bucket, "datasets/animals.jsonl")
    return f"s3://{bucket}/models/tiny/", f"s3://{bucket}/datasets/animals.jsonl"


def _keys(s3_env: S3Endpoint, bucket: str, prefix: str) -> list[str]:
    pages = s3_env.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"][len(prefix) :] for p in pages for o in p.get("Contents", []))


def _adapter(s3_env: S3Endpoint, bucket: str, run: str) -> dict[str, Any]:
    from safetensors.torch import load

    body = s3_env.client().get_object(
        Bucket=bucket, Key=f"{run}/adapter/adapter_model.safetensors"
    )["Body"]
    return load(body.read())


def _train(document: dict[str, Any], scratch: Path) -> recipe.TrainResult:
    return recipe.train(
        parse_tuningjob(document), recipe.RunOptions(scratch=scratch, metrics_port=None)
    )


TRAINING = {"maxSteps": 30, "checkpointEvery": 5, "keepCheckpoints": 2, "evalEvery": 10}


def test_a_30s_s3_outage_during_training_costs_nothing_and_gives_the_same_adapter(
    s3_env: S3Endpoint,
    s3_bucket: str,
    proxy: FaultProxy,
    proxied_spec: dict,
    tiny_model: Path,
    synthetic_data: Path,
    tmp_path: Path,
) -> None:
    """30 s of 503 SlowDown from S3 while training: periodic checkpoints that fall in
    it are skipped (logged), training goes on, the final checkpoint and the adapter are
    written after it; the adapter is bit-identical to an undisturbed run's; no step is
    trained twice (work lost: 0)."""
    model, data = _upload_inputs(s3_env, s3_bucket, tiny_model, synthetic_data)
    reference = manifest(
        model, data, f"s3://{s3_bucket}/calm/", training=TRAINING, s3=s3_env.spec()
    )
    _train(reference, tmp_path / "scratch-calm")

    disturbed = manifest(
        model, data, f"s3://{s3_bucket}/storm/", training=TRAINING, s3=proxied_spec
    )
    outage: dict[str, float] = {}

    def storm() -> None:  # once step 10's checkpoint is complete, S3 goes away for 30 s
        deadline = time.monotonic() + 300
        while "checkpoints/step-000010/COMPLETE" not in _keys(s3_env, s3_bucket, "storm/"):
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        outage["start"] = time.monotonic()
        proxy.set("slowdown")
        time.sleep(OUTAGE_S)
        proxy.set("pass")
        outage["end"] = time.monotonic()

    stormer = threading.Thread(target=storm, daemon=True)
    stormer.start()
    result = _train(disturbed, tmp_path / "scratch-storm")
    finished = time.monotonic()
    stormer.join(5)

    assert outage.get("end"), "the outage happened while the run was on"
    assert proxy.faults["slowdown"] > 0
    assert finished > outage["end"], "the run outlived the outage"
    assert result.metrics["steps"] == 30
    calm, storm_adapter = _adapter(s3_env, s3_bucket, "calm"), _adapter(s3_env, s3_bucket, "storm")
    assert calm.keys() == storm_adapter.keys()
    assert all((calm[k] == storm_adapter[k]).all() for k in calm), "same adapter"
    # Work lost: none. Every step was trained once (metrics.jsonl lists each once).
    lines = (tmp_path / "scratch-storm").rglob("metrics.jsonl")
    records = [json.loads(x) for x in next(iter(lines)).read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 30
    assert "checkpoints/step-000030/COMPLETE" in _keys(s3_env, s3_bucket, "storm/")

    # A different spec on this used destination never gets (or re-exports) the old adapter.
    before = _keys(s3_env, s3_bucket, "storm/adapter/")
    changed = manifest(
        model,
        data,
        f"s3://{s3_bucket}/storm/",
        training={**TRAINING, "learningRate": 1e-3},
        s3=s3_env.spec(),
    )
    with pytest.raises(InvalidConfigError, match="holds the output of another run"):
        _train(changed, tmp_path / "scratch-other")
    assert _keys(s3_env, s3_bucket, "storm/adapter/") == before
    again = _adapter(s3_env, s3_bucket, "storm")
    assert all((again[k] == storm_adapter[k]).all() for k in again)


def _cli_env(tmp_path: Path, s3_env: S3Endpoint, name: str) -> dict[str, str]:
    return {
        **s3_env.env(),
        "KUBETUNE_SCRATCH_DIR": str(tmp_path / f"scratch-{name}"),
        "KUBETUNE_WRITER_LEASE_SECONDS": "6",
        "OMP_NUM_THREADS": "1",
    }


def test_sigkill_during_a_checkpoint_upload_resumes_from_the_previous_checkpoint(
    s3_env: S3Endpoint,
    s3_bucket: str,
    proxy: FaultProxy,
    proxied_spec: dict,
    tiny_model: Path,
    synthetic_data: Path,
    tmp_path: Path,
) -> None:
    """SIGKILL while a checkpoint is being uploaded (its upload held by the proxy): the
    half-uploaded checkpoint has no COMPLETE marker; the next attempt waits out the dead
    pod's writer lease, resumes from the previous complete checkpoint (work lost: one
    checkpoint interval at most), removes the partial one and finishes."""
    model, data = _upload_inputs(s3_env, s3_bucket, tiny_model, synthetic_data)
    document = manifest(
        model, data, f"s3://{s3_bucket}/killed/", training=TRAINING, s3=proxied_spec
    )
    path = write_manifest(tmp_path / "job.yaml", document)
    proxy.pause_response(after=0, match=b"/killed/checkpoints/step-000010/")
    first = Trainer(["-f", str(path), "--metrics-port", "-1"], _cli_env(tmp_path, s3_env, "a"))
    assert proxy.paused.wait(300), "the upload of step 10's checkpoint started"
    os.kill(first.process.pid, signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL
    proxy.release()
    stored = _keys(s3_env, s3_bucket, "killed/checkpoints/")
    assert "step-000005/COMPLETE" in stored and "step-000010/COMPLETE" not in stored

    second = Trainer(["-f", str(path), "--metrics-port", "-1"], _cli_env(tmp_path, s3_env, "a"))
    resumed = second.wait_for(lambda r: "resumed from" in r.get("message", ""), timeout=300)
    assert "step-000005" in resumed["message"], resumed
    assert second.finish() == 0, "".join(second.seen[-20:])
    final = _keys(s3_env, s3_bucket, "killed/checkpoints/")
    complete = sorted(k.split("/")[0] for k in final if k.endswith("/COMPLETE"))
    assert complete == ["step-000025", "step-000030"]  # keepCheckpoints: 2
    assert {k.split("/")[0] for k in final} == set(complete), "no partial checkpoint left"


def test_two_trainers_on_one_destination_never_both_write(
    s3_env: S3Endpoint,
    s3_bucket: str,
    tiny_model: Path,
    synthetic_data: Path,
    tmp_path: Path,
) -> None:
    """The same manifest started twice at once (two processes of one run), and a
    different spec on the same destination: the first holds the writer lease and
    finishes; the second of the same run waits a lease term, sees the lease renewed
    (a live writer) and refuses (exit 78); the other spec is refused at once by the
    run record (exit 78). Neither writes a checkpoint or an adapter. (The first is then
    preempted with SIGTERM: it saves its checkpoint as the only writer.)"""
    model, data = _upload_inputs(s3_env, s3_bucket, tiny_model, synthetic_data)
    long_run = {**TRAINING, "maxSteps": 400, "checkpointEvery": 50}
    document = manifest(
        model, data, f"s3://{s3_bucket}/shared/", training=long_run, s3=s3_env.spec()
    )
    path = write_manifest(tmp_path / "job.yaml", document)
    other = write_manifest(
        tmp_path / "other.yaml",
        manifest(
            model,
            data,
            f"s3://{s3_bucket}/shared/",
            training={**long_run, "seed": 1},
            s3=s3_env.spec(),
        ),
    )
    first = Trainer(["-f", str(path), "--metrics-port", "-1"], _cli_env(tmp_path, s3_env, "a"))
    first.wait_for(lambda r: "writer lease" in r.get("message", ""), timeout=300)
    second = Trainer(["-f", str(path), "--metrics-port", "-1"], _cli_env(tmp_path, s3_env, "b"))
    third = Trainer(["-f", str(other), "--metrics-port", "-1"], _cli_env(tmp_path, s3_env, "c"))
    assert third.finish() == 78
    assert any("holds the output of another run" in line for line in third.seen)
    assert second.finish() == 78
    assert any("keeps writing to this destination" in line for line in second.seen)
    assert first.process.poll() is None, "the first trainer was still training meanwhile"
    # No need to train all 400 steps: preempt it (it checkpoints and exits 75).
    first.process.send_signal(signal.SIGTERM)
    assert first.finish() == 75, "".join(first.seen[-20:])
    assert any("checkpoint saved" in r.get("message", "") for r in first.log)
    for late in (second, third):
        messages = " ".join(r.get("message", "") for r in late.log)
        assert "checkpoint saved" not in messages and "adapter at" not in messages


def test_a_damaged_newest_checkpoint_falls_back_to_the_next_older_one(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    """The newest complete checkpoint loses a file (a store that lost it, a person who
    deleted it): the next attempt warns, resumes from the next older complete one
    instead of failing the Job (it used to exit 77/78), and ends with the same adapter
    as the first attempt (work lost: one checkpoint interval)."""
    from safetensors.torch import load_file

    training = {"maxSteps": 6, "checkpointEvery": 3, "keepCheckpoints": 2, "evalEvery": 3}
    document = manifest(
        str(tiny_model), str(synthetic_data), str(tmp_path / "out"), training=training
    )
    first = _train(document, tmp_path / "scratch-1")
    reference = load_file(str(first.local_adapter / "adapter_model.safetensors"))
    newest = tmp_path / "out" / "checkpoints" / "step-000006"
    (newest / "optimizer.pt").unlink()
    again = _train(document, tmp_path / "scratch-2")  # a new pod: nothing cached
    assert again.metrics["steps"] == 6
    redone = load_file(str(again.local_adapter / "adapter_model.safetensors"))
    assert all((reference[k] - redone[k]).abs().max() < 1e-5 for k in reference), (
        "resuming from step 3 reaches the same adapter"
    )
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert steps == [1, 2, 3, 4, 5, 6], "steps 4-6 once each in the record"


def test_sigterm_during_export_finishes_the_export_and_no_partial_adapter_is_visible(
    s3_env: S3Endpoint,
    s3_bucket: str,
    proxy: FaultProxy,
    proxied_spec: dict,
    tiny_model: Path,
    synthetic_data: Path,
    tmp_path: Path,
) -> None:
    """SIGTERM while the adapter's weights are being uploaded (the upload held by the
    proxy): while held, no adapter_config.json is visible (a half-uploaded folder is
    not an adapter); the trainer, past its last checkpoint, finishes the export within
    its grace period and exits 0 with the whole adapter."""
    model, data = _upload_inputs(s3_env, s3_bucket, tiny_model, synthetic_data)
    training = {"maxSteps": 4, "checkpointEvery": 2, "keepCheckpoints": 1, "evalEvery": 2}
    document = manifest(
        model, data, f"s3://{s3_bucket}/export/", training=training, s3=proxied_spec
    )
    path = write_manifest(tmp_path / "job.yaml", document)
    proxy.pause_response(after=0, match=b"/export/adapter/adapter_model.safetensors")
    trainer = Trainer(["-f", str(path), "--metrics-port", "-1"], _cli_env(tmp_path, s3_env, "x"))
    assert proxy.paused.wait(300), "the adapter upload started"
    assert "adapter/adapter_config.json" not in _keys(s3_env, s3_bucket, "export/")
    trainer.process.send_signal(signal.SIGTERM)
    time.sleep(1)
    proxy.release()
    assert trainer.finish() == 0, "".join(trainer.seen[-20:])
    stored = _keys(s3_env, s3_bucket, "export/adapter/")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(stored)
