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
from typing import TYPE_CHECKING, TypeVar

import click

from kubetune import __version__
from kubetune.api.contract import ExitCode
from kubetune.api.manifest import SpecError

if TYPE_CHECKING:  # imported lazily where used: see the module's docstring
    from kubetune.api.v1alpha1 import TuningJob
    from kubetune.client.cluster import Cluster

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


def _tuningjob_from_env() -> TuningJob:
    """The TuningJob the operator put in the pod's environment (contract.SPEC_ENV)."""
    import os

    from kubetune.api.contract import SPEC_ENV
    from kubetune.api.manifest import Problem, parse_tuningjob_json

    text = os.environ.get(SPEC_ENV)
    if not text:
        raise SpecError(
            f"${SPEC_ENV}",
            [Problem("", "is empty or unset; the operator puts the TuningJob there")],
        )
    return parse_tuningjob_json(text, f"${SPEC_ENV}")


@main.command()
@click.option(
    "-f",
    "--filename",
    "manifest",
    type=click.Path(dir_okay=False),
    help="A TuningJob manifest (YAML or JSON).",
)
@click.option(
    "--from-env",
    is_flag=True,
    help="The operator's Validating step: read the TuningJob from $KUBETUNE_TUNINGJOB and "
    "publish the prepared data to S3 for the trainer (no -o, no --report).",
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
def prepare(manifest: str | None, from_env: bool, output: str | None, report: str | None) -> None:
    """Build the packed, loss-masked dataset of a TuningJob, as the trainer would.

    Reads spec.dataset (local paths or s3://), formats, redacts, tokenizes with the
    tokenizer of spec.model.source, masks and packs; writes Parquet splits with the
    columns input_ids, labels (-100 where not trained), position_ids and seq_lengths,
    and a JSON report. Results are cached by a hash of the inputs
    ($KUBETUNE_SCRATCH_DIR, else ~/.cache/kubetune).
    """
    if bool(manifest) == from_env:
        raise click.UsageError("give exactly one of -f FILE or --from-env")
    if from_env:
        from kubetune.trainer.validate import validate_command

        sys.exit(run_guarded(lambda: validate_command(_tuningjob_from_env, json_logs=None)))

    def run() -> None:
        from pathlib import Path

        from kubetune.api.manifest import load_tuningjob
        from kubetune.trainer.data.pipeline import prepare as run_prepare
        from kubetune.trainer.scratch import default_workdir
        from kubetune.trainer.tokenizer import fetch_tokenizer, needs_pad_token

        job = load_tuningjob(manifest or "")
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

    def load() -> TuningJob:
        if filename:
            from kubetune.api.manifest import load_tuningjob

            return load_tuningjob(filename)
        return _tuningjob_from_env()

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
@click.option(
    "--validating-step",
    is_flag=True,
    help="Print the Validating step's Job (the CPU pod that checks the data first) instead.",
)
def render(filename: str, output: str, validating_step: bool) -> None:
    """Print the Job the operator would create for a TuningJob; no cluster needed.

    Uses the operator settings from the environment (KUBETUNE_OPERATOR_*), such as the
    default trainer image; see docs/operator.md.
    """

    def action() -> None:
        from kubetune.operator.render import render as render_job

        click.echo(render_job(filename, output, validating_step=validating_step), nl=False)

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


# --- Following runs: status, logs, wait, plot (the user's kubeconfig) -----------------


def _cluster_options(function: Callable[..., T]) -> Callable[..., T]:
    for option in reversed(
        [
            click.option(
                "-n",
                "--namespace",
                help="The TuningJob's namespace. Default: the kubeconfig context's, else default.",
            ),
            click.option("--context", help="The kubeconfig context to use."),
            click.option(
                "--kubeconfig",
                type=click.Path(dir_okay=False),
                help="The kubeconfig file. Default: $KUBECONFIG, else ~/.kube/config.",
            ),
        ]
    ):
        function = option(function)
    return function


def _complete_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[click.shell_completion.CompletionItem]:
    """Shell completion of TuningJob names, from the cluster (nothing when unreachable)."""
    try:
        from kubetune.client.cluster import Cluster

        cluster = Cluster(
            namespace=ctx.params.get("namespace"),
            context=ctx.params.get("context"),
            kubeconfig=ctx.params.get("kubeconfig"),
        )
        names = cluster.names()
        cluster.close()
    except Exception:
        return []
    return [click.shell_completion.CompletionItem(n) for n in names if n.startswith(incomplete)]


def _client_guarded(action: Callable[[], int | None]) -> None:
    """Client errors become a message and their exit code (3: no such TuningJob)."""
    from kubetune.client.cluster import ClientError
    from kubetune.client.curves import CurveError

    try:
        code = action()
    except ClientError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except CurveError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    sys.exit(code or 0)


def _connect(namespace: str | None, context: str | None, kubeconfig: str | None) -> Cluster:
    from kubetune.client.cluster import Cluster

    return Cluster(namespace=namespace, context=context, kubeconfig=kubeconfig)


@main.command()
@click.argument("name", shell_complete=_complete_names)
@_cluster_options
@click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True
)
def status(
    name: str, namespace: str | None, context: str | None, kubeconfig: str | None, output: str
) -> None:
    """Say how a TuningJob is doing: phase, progress, loss, ETA, reason, adapter.

    Exits 3 when there is no such TuningJob.
    """

    def action() -> int:
        import json

        from kubetune.client.view import describe

        cluster = _connect(namespace, context, kubeconfig)
        body = cluster.tuningjob(name)
        if output == "json":
            click.echo(json.dumps(body.get("status") or {}, indent=2, sort_keys=True))
        else:
            click.echo(describe(body))
        return 0

    _client_guarded(action)


@main.command()
@click.argument("name", shell_complete=_complete_names)
@_cluster_options
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines until the pod ends.")
@click.option("--tail", type=int, default=None, help="Only the last N lines.")
def logs(
    name: str,
    namespace: str | None,
    context: str | None,
    kubeconfig: str | None,
    follow: bool,
    tail: int | None,
) -> None:
    """Print the log of a TuningJob's trainer (its newest pod)."""

    def action() -> int:
        cluster = _connect(namespace, context, kubeconfig)
        for line in cluster.logs(name, follow=follow, tail=tail):
            click.echo(line)
        return 0

    _client_guarded(action)


@main.command()
@click.argument("name", shell_complete=_complete_names)
@_cluster_options
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Give up after this many seconds (exit 4). Default: wait as long as it takes.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing while waiting.")
def wait(
    name: str,
    namespace: str | None,
    context: str | None,
    kubeconfig: str | None,
    timeout: float | None,
    quiet: bool,
) -> None:
    """Wait until a TuningJob ends; the exit code says how.

    0 Succeeded, 1 Failed, 3 no such TuningJob (or deleted while waiting), 4 timed out.
    For scripts that prefer kubectl: `kubectl wait --for=condition=Succeeded tj/NAME`.
    """

    def action() -> int:
        from kubetune.client.view import WaitExit

        cluster = _connect(namespace, context, kubeconfig)
        seen: list[str] = []

        def report(body: dict) -> None:
            status = body.get("status") or {}
            progress = (status.get("progress") or {}).get("summary") or ""
            line = " ".join(
                part
                for part in (status.get("phase") or "Pending", status.get("reason"), progress)
                if part
            )
            if not quiet and (not seen or seen[-1] != line):
                seen.append(line)
                click.echo(f"{name}: {line}", err=True)

        ended, body = cluster.wait(name, timeout, report)
        status = (body or {}).get("status") or {}
        if ended is WaitExit.SUCCEEDED:
            adapter = (status.get("output") or {}).get("adapter")
            click.echo(f"{name} succeeded" + (f"; the adapter is at {adapter}" if adapter else ""))
        elif ended is WaitExit.FAILED:
            click.echo(f"{name} failed ({status.get('reason')}): {status.get('message')}")
        else:
            click.echo(f"{name}: still {status.get('phase') or 'Pending'} after {timeout:g}s")
        return int(ended)

    _client_guarded(action)


@main.command()
@click.argument("target", shell_complete=_complete_names)
@_cluster_options
@click.option(
    "-o",
    "--output",
    "png",
    type=click.Path(dir_okay=False),
    help="Where to write the PNG. Default: NAME-loss.png (metrics-loss.png for a file).",
)
@click.option("--no-png", is_flag=True, help="Only print the text sparkline.")
@click.option(
    "--s3-endpoint",
    help="S3 endpoint to read from, when the TuningJob's spec.s3.endpoint is an in-cluster address.",
)
def plot(
    target: str,
    namespace: str | None,
    context: str | None,
    kubeconfig: str | None,
    png: str | None,
    no_png: bool,
    s3_endpoint: str | None,
) -> None:
    """Plot a run's training and validation loss and learning rate.

    TARGET is a TuningJob's name (its metrics are read from spec.output.destination), or
    the location of a metrics.jsonl: s3://BUCKET/KEY or a local path. Prints a text
    sparkline and writes a PNG (needs matplotlib: pip install 'kubetune[plot]'). S3
    credentials come from the environment, as for the AWS CLI.
    """

    def action() -> int:
        from pathlib import Path

        from kubetune.api.contract import OutputLayout
        from kubetune.client.curves import read_metrics, save_png, summary

        if "/" in target or target.endswith(".jsonl"):
            location, title, endpoint = target, target, s3_endpoint
            s3: dict = {}
            default_png = "metrics-loss.png"
        else:
            body = _connect(namespace, context, kubeconfig).tuningjob(target)
            spec = body.get("spec") or {}
            location = spec["output"]["destination"].rstrip("/") + "/" + OutputLayout.METRICS
            s3 = spec.get("s3") or {}
            endpoint = s3_endpoint or s3.get("endpoint")
            title, default_png = f"TuningJob {target}", f"{target}-loss.png"
        curves = read_metrics(
            location,
            endpoint=endpoint,
            region=s3.get("region"),
            addressing_style=s3.get("addressingStyle", "auto"),
        )
        if curves.empty():
            click.echo(f"{location}: no loss recorded yet", err=True)
            return 1
        click.echo(summary(curves))
        if not no_png:
            path = Path(png or default_png)
            save_png(curves, path, title)
            click.echo(f"wrote {path}")
        return 0

    _client_guarded(action)
