"""Run identity and the single-writer lease, on local destinations (the same code runs
on S3 with conditional writes: tests/faults/test_trainer_faults.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api.manifest import parse_tuningjob
from kubetune.trainer.errors import InvalidConfigError, StorageUnavailableError
from kubetune.trainer.ownership import (
    LeaseLost,
    WriterLease,
    check_checkpoint_owner,
    claim_destination,
    run_identity,
)
from kubetune.trainer.storage import Storage
from tests.unit.operator_fixtures import manifest


def job(uid: str | None = None, **spec: dict) -> object:
    document = manifest(**spec)
    if uid:
        document["metadata"]["uid"] = uid
    return parse_tuningjob(document)


def test_the_fingerprint_follows_what_changes_the_result_only() -> None:
    base = run_identity(job()).fingerprint
    assert run_identity(job(training={"logEvery": 1, "checkpointEvery": 7})).fingerprint == base
    assert run_identity(job(output={"destination": "s3://elsewhere/x/"})).fingerprint == base
    assert run_identity(job(training={"learningRate": 1e-3})).fingerprint != base
    assert run_identity(job(dataset={"source": "s3://d/other.jsonl"})).fingerprint != base


def test_the_same_run_reclaims_its_destination_and_another_is_refused(tmp_path: Path) -> None:
    storage, dest = Storage(), str(tmp_path / "out")
    first = run_identity(job("uid-1"))
    claim_destination(storage, dest, first)
    claim_destination(storage, dest, first)  # a retried pod, a resumed suspension
    claim_destination(storage, dest, run_identity(job()))  # the same manifest, locally
    other = run_identity(job("uid-2", training={"learningRate": 1e-3}))
    with pytest.raises(InvalidConfigError) as refused:
        claim_destination(storage, dest, other)
    message = str(refused.value)
    assert "uid uid-1" in message and "uid uid-2" in message
    assert "spec.output.destination to a new prefix" in message
    with pytest.raises(InvalidConfigError, match="another run"):  # same spec, other TuningJob
        claim_destination(storage, dest, run_identity(job("uid-3")))
    assert json.loads((tmp_path / "out" / "run.json").read_text())["uid"] == "uid-1"


def test_outputs_without_a_run_record_are_not_taken_over(tmp_path: Path) -> None:
    (tmp_path / "out" / "adapter").mkdir(parents=True)
    (tmp_path / "out" / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(InvalidConfigError, match="made by an unknown run"):
        claim_destination(Storage(), str(tmp_path / "out"), run_identity(job()))


def test_a_checkpoint_of_another_run_is_never_resumed() -> None:
    ours = run_identity(job("uid-1"))
    check_checkpoint_owner({"run": ours.as_record()}, ours, "ckpt")
    check_checkpoint_owner({}, ours, "ckpt")  # made before runs were recorded
    other = run_identity(job("uid-1", training={"seed": 7}))
    with pytest.raises(InvalidConfigError, match="another run"):
        check_checkpoint_owner({"run": other.as_record()}, ours, "ckpt")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_live_lease_of_another_run_refuses_and_one_of_this_run_is_waited_out(
    tmp_path: Path,
) -> None:
    storage, dest, clock = Storage(), str(tmp_path / "out"), Clock()
    ours = run_identity(job("uid-1"))
    crashed = WriterLease(storage, dest, ours, seconds=60, clock=clock, sleep=clock.sleep)
    crashed.acquire()  # then the pod dies without releasing
    other = WriterLease(
        storage, dest, run_identity(job("uid-2")), seconds=60, clock=clock, sleep=clock.sleep
    )
    with pytest.raises(InvalidConfigError, match="is writing to this destination now"):
        other.acquire()
    retry = WriterLease(storage, dest, ours, seconds=60, clock=clock, sleep=clock.sleep)
    started = clock.now
    retry.acquire()
    assert 60 <= clock.now - started <= 66, "waited for the crashed pod's lease to expire"
    with pytest.raises(LeaseLost):  # the crashed pod comes back: it must not write
        crashed.renew()
    retry.renew()
    retry.release()
    again = WriterLease(storage, dest, ours, seconds=60, clock=clock, sleep=clock.sleep)
    before = clock.now
    again.acquire()
    assert clock.now == before, "a released lease is taken at once"


def test_a_live_writer_of_the_same_run_is_refused_after_a_term(tmp_path: Path) -> None:
    # The same manifest started twice locally: the first keeps its lease alive.
    storage, dest, clock = Storage(), str(tmp_path / "out"), Clock()
    ours = run_identity(job())
    first = WriterLease(storage, dest, ours, seconds=30, clock=clock, sleep=clock.sleep)
    first.acquire()

    def sleep_and_renew(seconds: float) -> None:
        clock.sleep(seconds)
        first.renew()

    second = WriterLease(storage, dest, ours, seconds=30, clock=clock, sleep=sleep_and_renew)
    with pytest.raises(InvalidConfigError, match="keeps writing to this destination"):
        second.acquire()


def test_conditional_writes_let_one_of_two_writers_win(tmp_path: Path) -> None:
    storage, uri = Storage(), str(tmp_path / "obj")
    first = storage.write_if(uri, b"a", expect=None)
    assert first is not None
    assert storage.write_if(uri, b"b", expect=None) is None
    second = storage.write_if(uri, b"c", expect=first)
    assert second is not None
    assert storage.write_if(uri, b"d", expect=first) is None
    assert Path(uri).read_bytes() == b"c"


def test_a_periodic_checkpoint_the_store_refuses_is_skipped_not_fatal(tmp_path: Path) -> None:
    from kubetune.trainer.checkpoint import CheckpointStore
    from kubetune.trainer.state import TrainState, capture_rng
    from tests.unit.test_trainer_checkpoint import objects

    store = CheckpointStore(Storage(), str(tmp_path / "out"), tmp_path / "scratch", keep=2)

    def outage() -> None:
        raise StorageUnavailableError("s3://x: SlowDown after every retry")

    def save(may_fail: bool) -> str | None:
        return store.save(
            4,
            objects(),
            TrainState(step=4),
            capture_rng(),
            rank=0,
            is_main=True,
            barrier=lambda: None,
            extra_state={},
            before_publish=outage,
            may_fail=may_fail,
        )

    assert save(may_fail=True) is None
    assert store.list() == []
    assert not store.local_folder(4).exists(), "the scratch copy is not left behind"
    with pytest.raises(StorageUnavailableError):
        save(may_fail=False)  # the final and the SIGTERM checkpoints must succeed
