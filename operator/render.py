"""`kubetune render -f tuningjob.yaml`: the objects the operator would create, offline.

For review and GitOps: the same validation and the same pure builder as the operator,
with the operator settings taken from the environment (KUBETUNE_OPERATOR_*), and no
cluster. The ownerReference is left out because only the API server knows the
TuningJob's uid.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kubetune.api.manifest import SpecError, load_tuningjob
from kubetune.operator.builders import build_job, build_validate_job
from kubetune.operator.settings import Settings, load_settings
from kubetune.operator.validation import PolicyError, policy_problems, semantic_problems


def render(
    path: str | Path,
    output: str = "yaml",
    settings: Settings | None = None,
    *,
    validating_step: bool = False,
) -> str:
    """The GPU Job (or, with validating_step, the Validating step's Job that comes first)."""
    settings = settings or load_settings()
    tuningjob = load_tuningjob(path)
    problems = semantic_problems(tuningjob, settings)
    if problems:
        raise SpecError(str(path), problems)
    refusals = policy_problems(tuningjob, settings)
    if refusals:
        raise PolicyError(str(path), refusals)
    job = (build_validate_job if validating_step else build_job)(tuningjob, settings)
    if output == "json":
        return json.dumps(job, indent=2)
    which = "The Validating step's Job" if validating_step else "The Job"
    header = (
        f"# {which} the kubetune operator creates for TuningJob {tuningjob.metadata.name!r} ({path}).\n"
        "# The operator adds an ownerReference to the TuningJob, whose uid the API server assigns.\n"
    )
    return header + yaml.safe_dump(job, sort_keys=False, width=120)
