"""Where the trainer keeps what it downloads and builds: the pod's scratch volume, or a cache.

In a pod the operator mounts an emptyDir and names it in $KUBETUNE_SCRATCH_DIR
(`contract.SCRATCH_DIR_ENV`); on a workstation the same things go under the user's
cache folder, ~/.cache/kubetune ($XDG_CACHE_HOME/kubetune).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from kubetune.api.contract import SCRATCH_DIR_ENV
from kubetune.api.v1alpha1 import TuningJob


def cache_root() -> Path:
    """The workstation's cache folder for kubetune: $XDG_CACHE_HOME/kubetune or ~/.cache/kubetune."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubetune"


def default_workdir() -> Path:
    """Where `kubetune prepare` caches: the pod's scratch volume, else the cache root."""
    scratch = os.environ.get(SCRATCH_DIR_ENV)
    if scratch:
        return Path(scratch)
    return cache_root()


def scratch_folder(job: TuningJob, scratch: Path | None = None) -> Path:
    """Where downloads, prepared data and checkpoints in transit live for this run (created).

    `scratch` (`kubetune train --scratch`) wins; then the pod's scratch volume; else a
    folder per job under the cache root, named after the job and its destination.
    """
    if scratch is not None:
        root = scratch
    elif os.environ.get(SCRATCH_DIR_ENV):
        root = Path(os.environ[SCRATCH_DIR_ENV])
    else:
        digest = hashlib.sha256(job.spec.output.destination.encode()).hexdigest()[:10]
        root = cache_root() / "runs" / f"{job.metadata.name}-{digest}"
    root.mkdir(parents=True, exist_ok=True)
    return root
