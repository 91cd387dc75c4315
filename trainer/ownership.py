"""Who may write under `spec.output.destination`: run identity and one writer at a time.

A destination belongs to one *run*: the TuningJob's UID (where there is one; a local
`kubetune train` has none) and a fingerprint of the parts of the spec that change the
result (model, data, method, training hyperparameters; not where results go, how
often they are logged or checkpointed, or the resources). `run.json` at the
destination records it; it is written once, with a conditional write (S3
If-None-Match: *), so two runs racing for a fresh destination cannot both claim it.

- The same run (same fingerprint, and the same UID where both have one) resumes
  from the checkpoints there, as before: re-running the same manifest locally, a
  retried pod, a resumed suspension.
- Another run refuses, at once and permanently (exit 78, InvalidSpec), naming both
  runs and what to do: it never resumes from, re-exports or overwrites another run's
  output. (Refusing was chosen over a fresh sub-folder: the adapter stays where the
  user said it would be, and nothing is written that nobody asked for.)

Within a run, one process writes at a time: `writer-lease.json` holds a random holder
id and an expiry, taken with If-None-Match: * and renewed or taken over with If-Match
on the ETag read, so the store serialises competing writers. A lease held by another
run and not expired refuses the newcomer; one of this run (a pod that crashed and was
replaced) is waited for until it expires, so a crashed pod blocks for at most
LEASE_SECONDS. Before each publish (a checkpoint's marker, the adapter) the holder
renews; a holder that finds the lease taken stops (`LeaseLost`) instead of writing.
Expiry is judged on wall clocks: the skew between nodes must be well under the lease.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from kubetune.api.contract import OutputLayout
from kubetune.api.v1alpha1 import TuningJob
from kubetune.trainer.errors import InvalidConfigError, StorageUnavailableError, TrainerError
from kubetune.trainer.storage import Storage, join_uri

log = logging.getLogger(__name__)

# The writer lease's term: how long a crashed writer blocks the next one at most.
# KUBETUNE_WRITER_LEASE_SECONDS overrides it (the fault tests use a few seconds).
LEASE_SECONDS = float(os.environ.get("KUBETUNE_WRITER_LEASE_SECONDS") or 120)
# The training parameters that do not change the adapter.
_NEUTRAL_TRAINING = {
    "logEvery",
    "evalEvery",
    "checkpointEvery",
    "keepCheckpoints",
    "evalExactMatch",
}


class LeaseLost(TrainerError):
    """Another writer took the destination over: this one must not write any more.

    Exit FAILED, not permanent: the Job's next attempt finds out whether the new
    holder is this run (it then waits and resumes) or another (it refuses).
    """


@dataclass(frozen=True)
class RunIdentity:
    fingerprint: str  # sha256 of the result-changing spec
    uid: str | None  # the TuningJob's metadata.uid; None for a local run
    name: str
    namespace: str | None

    def same_run(self, record: dict[str, Any]) -> bool:
        if record.get("fingerprint") != self.fingerprint:
            return False
        other = record.get("uid")
        return self.uid is None or other is None or other == self.uid

    def describe(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        uid = f" uid {self.uid}" if self.uid else ""
        return f"TuningJob {where}{uid} (spec {self.fingerprint[:12]})"

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def describe_record(record: dict[str, Any]) -> str:
    return RunIdentity(
        str(record.get("fingerprint", "?")),
        record.get("uid"),
        str(record.get("name", "?")),
        record.get("namespace"),
    ).describe()


def spec_fingerprint(job: TuningJob) -> str:
    spec = job.spec.model_dump(by_alias=True, mode="json")
    training = {k: v for k, v in spec["training"].items() if k not in _NEUTRAL_TRAINING}
    parts = {k: spec[k] for k in ("model", "dataset", "method")} | {"training": training}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def run_identity(job: TuningJob) -> RunIdentity:
    extra = job.metadata.model_extra or {}
    uid = extra.get("uid") or None
    return RunIdentity(spec_fingerprint(job), uid, job.metadata.name, job.metadata.namespace)


def _other_run_error(
    ours: RunIdentity, record: dict[str, Any], destination: str
) -> InvalidConfigError:
    return InvalidConfigError(
        f"{destination} holds the output of another run, {describe_record(record)}; this is "
        f"{ours.describe()}. A run never resumes from or overwrites another run's results: "
        "set spec.output.destination to a new prefix (or delete the old run's output there "
        "if it is no longer wanted)"
    )


def claim_destination(storage: Storage, destination: str, ours: RunIdentity) -> None:
    """Make `destination` this run's, or raise InvalidConfigError if it is another run's."""
    uri = join_uri(destination, OutputLayout.RUN_RECORD)
    body = json.dumps(ours.as_record(), indent=1, sort_keys=True).encode()
    for _ in range(3):
        if storage.exists(uri):
            record = json.loads(storage.read_bytes(uri))
            if not ours.same_run(record):
                raise _other_run_error(ours, record, destination)
            return
        if _has_outputs(storage, destination):
            raise InvalidConfigError(
                f"{destination} holds checkpoints or an adapter but no {OutputLayout.RUN_RECORD}: "
                "they were made by an unknown run (an older kubetune, or another tool); set "
                "spec.output.destination to a new prefix, or delete what is there"
            )
        if storage.write_if(uri, body, expect=None) is not None:
            log.info("destination %s claimed for %s", destination, ours.describe())
            return
    raise StorageUnavailableError(f"{uri}: could not read or claim the run record")


def _has_outputs(storage: Storage, destination: str) -> bool:
    return any(
        storage.list_objects(join_uri(destination, folder))
        for folder in (OutputLayout.CHECKPOINTS, OutputLayout.ADAPTER)
    )


def check_checkpoint_owner(state: dict[str, Any], ours: RunIdentity, where: str) -> None:
    """A checkpoint records its run: never resume from another's (defence in depth)."""
    record = state.get("run")
    if record is not None and not ours.same_run(record):
        raise _other_run_error(ours, record, where)


class WriterLease:
    """The destination's single-writer lease (see the module docs)."""

    def __init__(
        self,
        storage: Storage,
        destination: str,
        ours: RunIdentity,
        *,
        seconds: float = LEASE_SECONDS,
        clock: Any = time.time,
        sleep: Any = time.sleep,
    ) -> None:
        self.storage, self.ours, self.seconds = storage, ours, seconds
        self.clock, self.sleep = clock, sleep
        self.uri = join_uri(destination, OutputLayout.WRITER_LEASE)
        self.holder = f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._etag: str | None = None
        self._lock = threading.Lock()  # renewals from the keeper thread and before a publish

    def _body(self) -> bytes:
        return json.dumps(
            {
                "holder": self.holder,
                "run": self.ours.as_record(),
                "expires": self.clock() + self.seconds,
            },
            sort_keys=True,
        ).encode()

    def acquire(self) -> None:
        """Take the lease; wait for an expiring one of this run; refuse another run's.

        A lease of this run that stays alive (renewed) for longer than its term while we
        wait belongs to a live process of the same run (the same manifest started twice
        locally): that refuses too.
        """
        waited_since: float | None = None
        while True:
            current = self.storage.stat(self.uri) if self.storage.exists(self.uri) else None
            if current is None:
                self._etag = self.storage.write_if(self.uri, self._body(), expect=None)
            else:
                lease = json.loads(self.storage.read_bytes(self.uri))
                left = float(lease.get("expires", 0)) - self.clock()
                if lease.get("holder") != self.holder and left > 0:
                    if not self.ours.same_run(lease.get("run") or {}):
                        raise InvalidConfigError(
                            f"{self.uri}: {describe_record(lease.get('run') or {})} is writing "
                            f"to this destination now (holder {lease.get('holder')}, for "
                            f"{left:.0f}s more); two runs must not share a destination: set "
                            "spec.output.destination to a new prefix"
                        )
                    waited_since = waited_since or self.clock()
                    if self.clock() - waited_since > self.seconds:
                        raise InvalidConfigError(
                            f"{self.uri}: another process of this run ({lease.get('holder')}) "
                            "keeps writing to this destination; two trainers must not write "
                            "there at once: stop one of them"
                        )
                    log.info(
                        "the destination's writer lease is held by %s (this run's previous "
                        "attempt?); waiting %.0fs for it to expire",
                        lease.get("holder"),
                        left,
                    )
                    self.sleep(min(left, 5.0) + 0.1)
                    continue
                # Expired (or ours): take it over, conditionally on what was read.
                self._etag = self.storage.write_if(self.uri, self._body(), expect=current.etag)
            if self._etag is not None:
                log.info("writer lease %s taken as %s", self.uri, self.holder)
                return
            # Someone else wrote it between our read and our write: look again.

    def renew(self) -> None:
        """Extend the lease before a publish; LeaseLost if another writer took it."""
        with self._lock:
            if self._etag is None:
                raise LeaseLost(f"{self.uri}: not held")
            etag = self.storage.write_if(self.uri, self._body(), expect=self._etag)
            if etag is None:
                self._etag = None
                raise LeaseLost(
                    f"{self.uri}: another writer took the destination over (this one was too "
                    "slow to renew its lease); stopping without writing anything more"
                )
            self._etag = etag

    def keep_renewing(self) -> None:
        """Renew every third of the term on a daemon thread, so a long gap between
        checkpoints does not let the lease lapse. A store that is down is tried again;
        a lost lease is noticed at the next publish (renew raises LeaseLost there)."""

        def loop() -> None:
            while self._etag is not None:
                self.sleep(self.seconds / 3)
                try:
                    if self._etag is not None:
                        self.renew()
                except LeaseLost:
                    return
                except TrainerError as e:
                    log.warning("could not renew the writer lease (will try again): %s", e)

        threading.Thread(target=loop, name="writer lease", daemon=True).start()

    def release(self) -> None:
        """Let the next writer in at once (best effort: an expired lease does the same)."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self._etag is None:
            return
        try:
            lease = json.loads(self.storage.read_bytes(self.uri))
            if lease.get("holder") == self.holder:
                lease["expires"] = 0
                self.storage.write_if(self.uri, json.dumps(lease).encode(), expect=self._etag)
        except TrainerError as e:
            log.warning("could not release the writer lease: %s", e)
        self._etag = None
