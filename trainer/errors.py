"""Errors the trainer raises on purpose, each tied to an exit code of the contract.

`kubetune prepare/train` turn these into a message on stderr, a termination message
and the exit code (`kubetune.api.contract.ExitCode`) that tells the operator whether
retrying can help. Messages say what was wrong, where (file, line, field, S3 key)
and what to do; they never contain credentials.
"""

from __future__ import annotations

from kubetune.api.contract import ExitCode


class TrainerError(Exception):
    """Base class: an error with an exit code and a status reason."""

    exit_code: ExitCode = ExitCode.FAILED

    @property
    def reason(self) -> str:
        return self.exit_code.reason


class InvalidConfigError(TrainerError):
    """The spec cannot work as written (or the model it names cannot be used)."""

    exit_code = ExitCode.INVALID_CONFIG


class BadDataError(TrainerError):
    """The dataset cannot be used: unreadable records, nothing left to train on."""

    exit_code = ExitCode.BAD_DATA


class StorageAccessError(TrainerError):
    """A bucket, key or path is missing, or access to it is denied."""

    exit_code = ExitCode.STORAGE_ACCESS


class StorageUnavailableError(TrainerError):
    """S3 kept failing with server errors, throttling or timeouts after every retry.

    Not permanent (exit code FAILED): the Job's backoff retries the run, which resumes
    from its last checkpoint. Missing or denied storage is a StorageAccessError instead.
    """

    exit_code = ExitCode.FAILED


class Preempted(TrainerError):
    """SIGTERM arrived: retrying resumes from `checkpoint`, the one saved on the way out.

    `checkpoint` is None when the stop came before training started (nothing to save).
    """

    exit_code = ExitCode.PREEMPTED

    def __init__(self, message: str, checkpoint: str | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
