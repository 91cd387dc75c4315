"""The `kubetune` command.

Each subcommand is a thin shell: it parses options, imports its implementation
lazily (so `kubetune render` never imports torch, and `kubetune train` never imports
kopf), and turns the errors the project raises on purpose into a message and the
exit code of the operator/trainer contract (`kubetune.api.contract.ExitCode`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

import click

from kubetune import __version__
from kubetune.api.contract import ExitCode
from kubetune.api.manifest import SpecError

T = TypeVar("T")

log = logging.getLogger("kubetune")


def run_guarded(action: Callable[[], T]) -> T:
    """Run a command's body; known errors become a clear message and their exit code."""
    try:
        return action()
    except SpecError as e:
        click.echo(f"error: invalid TuningJob\n{e.render()}", err=True)
        sys.exit(ExitCode.INVALID_CONFIG)
    except Exception as e:
        # Trainer errors carry their own exit code; imported lazily to keep torch out.
        code = getattr(e, "exit_code", None)
        if isinstance(code, ExitCode):
            click.echo(f"error ({code.reason}): {e}", err=True)
            sys.exit(code)
        raise


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kubetune")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Fine-tune language models on Kubernetes.

    The same TuningJob manifest you `kubectl apply` runs here locally: `kubetune
    prepare -f job.yaml` builds the packed dataset, `kubetune train -f job.yaml` trains
    the adapter, `kubetune render -f job.yaml` shows the Job the operator would create.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@main.command()
@click.option(
    "-f",
    "--filename",
    "manifest",
    required=True,
    type=click.Path(dir_okay=False),
    help="A TuningJob manifest (YAML or JSON).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False),
    help="Folder for the packed splits (train/validation/test.parquet) and the report. Default: ./<name>-prepared/",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False),
    help="Write the JSON report here instead of OUTPUT/prepare-report.json.",
)
def prepare(manifest: str, output: str | None, report: str | None) -> None:
    """Build the packed, loss-masked dataset of a TuningJob, as the trainer would.

    Reads spec.dataset (local paths or s3://), formats, redacts, tokenizes with the
    tokenizer of spec.model.source, masks and packs; writes Parquet splits with the
    columns input_ids, labels (-100 where not trained), position_ids and seq_lengths,
    and a JSON report. Results are cached by a hash of the inputs
    ($KUBETUNE_SCRATCH_DIR, else ~/.cache/kubetune).
    """

    def run() -> None:
        from pathlib import Path

        from kubetune.api.manifest import load_tuningjob
        from kubetune.trainer.data.pipeline import prepare as run_prepare
        from kubetune.trainer.scratch import default_workdir
        from kubetune.trainer.tokenizer import fetch_tokenizer, needs_pad_token

        job = load_tuningjob(manifest)
        workdir = default_workdir()
        tokenizer = fetch_tokenizer(
            job.spec.model, job.spec.s3, workdir, needs_pad=needs_pad_token(job.spec.training)
        )
        prepared = run_prepare(job, workdir, tokenizer)
        folder = Path(output) if output else Path(f"{job.metadata.name}-prepared")
        written = prepared.save(folder, Path(report) if report else None)
        summary = prepared.report
        click.echo(
            f"{summary['examples']['kept']} examples ({summary['tokens']} tokens, {summary['trainedTokens']} trained) "
            f"in {summary['packs']} rows, packing efficiency {summary['packingEfficiency']}"
            + (" (from cache)" if prepared.from_cache else "")
        )
        for path in written:
            click.echo(f"wrote {path}")

    run_guarded(run)


@main.command()
@click.option(
    "-f",
    "--filename",
    type=click.Path(dir_okay=False, path_type=str),
    help="The TuningJob manifest (YAML or JSON) to run.",
)
@click.option(
    "--from-env",
    is_flag=True,
    help="Read the TuningJob as JSON from $KUBETUNE_TUNINGJOB (how the operator's pod runs it).",
)
@click.option(
    "--scratch",
    type=click.Path(file_okay=False, path_type=str),
    help="Folder for downloads, prepared data and checkpoints in transit "
    "(default: $KUBETUNE_SCRATCH_DIR, else ~/.cache/kubetune/runs/NAME-HASH).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(-1, 65535),
    default=None,
    help="Port of the Prometheus endpoint (default 9400; 0 picks a free port; -1 serves none).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    default="auto",
    show_default=True,
    help="auto: text on a terminal, JSON lines otherwise.",
)
def train(
    filename: str | None,
    from_env: bool,
    scratch: str | None,
    metrics_port: int | None,
    log_format: str,
) -> None:
    """Train the adapter a TuningJob describes, here (locally or inside the training pod).

    Runs the same manifest you `kubectl apply`: model and data from local paths or S3,
    results to spec.output.destination. Exit codes follow the operator contract
    (0 done, 65 bad data, 75 preempted after a checkpoint, 77 storage, 78 invalid spec).
    """
    if bool(filename) == from_env:
        raise click.UsageError("give exactly one of -f FILE or --from-env")

    def load():  # type: ignore[no-untyped-def]
        if filename:
            from kubetune.api.manifest import load_tuningjob

            return load_tuningjob(filename)
        import os

        from kubetune.api.contract import SPEC_ENV
        from kubetune.api.manifest import parse_tuningjob_json

        text = os.environ.get(SPEC_ENV)
        if not text:
            from kubetune.api.manifest import Problem

            raise SpecError(
                f"${SPEC_ENV}",
                [Problem("", "is empty or unset; the operator puts the TuningJob there")],
            )
        return parse_tuningjob_json(text, f"${SPEC_ENV}")

    from pathlib import Path

    from kubetune.api.contract import METRICS_PORT
    from kubetune.trainer.command import run_command
    from kubetune.trainer.recipe import RunOptions

    port = METRICS_PORT if metrics_port is None else (None if metrics_port < 0 else metrics_port)
    options = RunOptions(scratch=Path(scratch) if scratch else None, metrics_port=port)
    json_logs = {"auto": None, "json": True, "text": False}[log_format]
    code = run_guarded(lambda: run_command(load, options, sys.argv[1:], json_logs=json_logs))
    sys.exit(code)


@main.command()
@click.option(
    "-f",
    "--filename",
    required=True,
    type=click.Path(dir_okay=False),
    help="The TuningJob manifest (YAML or JSON; other documents in it are ignored).",
)
@click.option(
    "-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True
)
def render(filename: str, output: str) -> None:
    """Print the Job the operator would create for a TuningJob; no cluster needed.

    Uses the operator settings from the environment (KUBETUNE_OPERATOR_*), such as the
    default trainer image; see docs/operator.md.
    """

    def action() -> None:
        from kubetune.operator.render import render as render_job

        click.echo(render_job(filename, output), nl=False)

    run_guarded(action)


@main.command()
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write the CRD into this folder (as `make crds` does for crds/) instead of printing it.",
)
def crd(output_dir: str | None) -> None:
    """Print (or write) the TuningJob CustomResourceDefinition, generated from the spec model."""
    from pathlib import Path

    from kubetune.api.crd import CRD_FILE, render_crd

    text = render_crd()
    if output_dir is None:
        click.echo(text, nl=False)
        return
    path = Path(output_dir) / CRD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    click.echo(f"wrote {path}", err=True)


@main.command()
def operator() -> None:
    """Run the TuningJob operator (kopf): TuningJobs in, GPU Jobs out, status back.

    Configured by environment variables KUBETUNE_OPERATOR_* (docs/operator.md); talks to
    the cluster of the in-cluster service account or of KUBECONFIG.
    """

    def action() -> None:
        from kubetune.operator.main import run

        run()

    run_guarded(action)
