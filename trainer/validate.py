"""The Validating step: `kubetune prepare --from-env`, in a small CPU pod before any GPU.

The operator runs it first (docs/operator.md, Validating). It reads the dataset from
S3 with the model's tokenizer (only the tokenizer's files are downloaded), formats,
redacts, masks and packs exactly as the trainer would, and publishes the packed splits
and the report under $KUBETUNE_PREPARED (spec.output.destination/prepared/) and
prepare-report.json. A bad dataset ends here with exit code 65 and a termination
message naming the file, line and field, so no GPU is ever requested for it. The GPU
trainer then takes the published data for its cache key instead of preparing again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

from kubetune.api.contract import PREPARED_ENV, ExitCode, OutputLayout, TerminationMessage
from kubetune.api.v1alpha1 import TuningJob
from kubetune.trainer.logs import configure_logging
from kubetune.trainer.outcome import Outcome, outcome_of, report

log = logging.getLogger(__name__)


def validate_command(load: Callable[[], TuningJob], *, json_logs: bool | None) -> int:
    """Prepare and publish; every exit leaves a termination message (as the trainer's)."""
    configure_logging(json_logs=json_logs, level=logging.getLogger().level or None)
    try:
        job = load()
        message = validate_and_publish(job)
    except BaseException as error:
        outcome = outcome_of(error)
        log.error("%s: %s", outcome.message.reason, outcome.message.message)
        report(outcome, 0)
        raise
    log.info("%s", message)
    report(Outcome(ExitCode.OK, TerminationMessage(reason="Validated", message=message)), 0)
    return int(ExitCode.OK)


def validate_and_publish(job: TuningJob) -> str:
    from kubetune.trainer.data import pipeline
    from kubetune.trainer.scratch import default_workdir
    from kubetune.trainer.storage import Storage, join_uri
    from kubetune.trainer.tokenizer import fetch_tokenizer, needs_pad_token

    spec = job.spec
    base = os.environ.get(PREPARED_ENV) or join_uri(spec.output.destination, OutputLayout.PREPARED)
    storage = Storage(spec.s3)
    workdir = default_workdir()
    # Loaded as the trainer loads it (pad token included): the same cache key, so the
    # trainer takes this data.
    tokenizer = fetch_tokenizer(
        spec.model, spec.s3, workdir, needs_pad=needs_pad_token(spec.training)
    )
    prepared = pipeline.prepare(job, workdir, tokenizer, storage)
    uri = pipeline.publish(prepared, base, storage)
    storage.write_text(
        join_uri(spec.output.destination, OutputLayout.PREPARE_REPORT),
        json.dumps(prepared.report, indent=2) + "\n",
    )
    summary = prepared.report
    examples = (summary.get("examples") or {}).get("kept")
    return (
        f"the data is valid: {examples} examples, {summary.get('tokens')} tokens "
        f"({summary.get('trainedTokens')} trained) in {summary.get('packs')} rows; prepared at {uri}"
    )
