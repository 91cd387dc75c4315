"""`kubetune train` as a command: logs, signals, the data-parallel launch, the outcome.

`run_command` configures logging, turns SIGTERM and Ctrl-C into a stop request the
training loop answers with a checkpoint, launches one worker per GPU under torchrun's
agent when the plan is distributed, runs `recipe.train` otherwise, and reports the
outcome as an exit code and a termination message (`kubetune.api.contract`).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kubetune.api.contract import ExitCode
from kubetune.api.v1alpha1 import TuningJob
from kubetune.trainer import recipe
from kubetune.trainer.distributed import launched_by_torchrun
from kubetune.trainer.errors import Preempted
from kubetune.trainer.logs import configure_logging
from kubetune.trainer.loop import StopSignal
from kubetune.trainer.outcome import outcome_of, report, success
from kubetune.trainer.plan import Hardware, TrainPlan, make_plan
from kubetune.trainer.recipe import RunOptions

log = logging.getLogger(__name__)


def run_command(
    load: Callable[[], TuningJob], options: RunOptions, argv: list[str], *, json_logs: bool | None
) -> int:
    """`kubetune train`: configure logs, launch workers or train, report the outcome.

    Returns the exit code for a launcher; raises (after reporting) for the CLI's
    error handling otherwise.
    """
    rank = int(os.environ.get("RANK", "0"))
    configure_logging(rank=rank, json_logs=json_logs, level=logging.getLogger().level or None)
    stop = StopSignal()
    try:
        # From the start: a SIGTERM while torch is still importing also ends in an outcome.
        with _stop_on_signals(stop):
            job = load()
            plan = make_plan(job.spec, Hardware.probe())
            if stop.requested:
                raise Preempted(
                    f"stopped by {stop.reason} before training started; nothing to save"
                )
            if plan.distributed and not launched_by_torchrun():
                return int(_launch(plan, argv))  # torchrun's agent handles signals from here
            result = recipe.train(job, options, plan=plan, stop=stop)
    except BaseException as error:
        outcome = outcome_of(error)
        if outcome.exit_code != ExitCode.FAILED:
            log.error("%s: %s", outcome.message.reason, outcome.message.message)
        report(outcome, rank)
        raise
    report(success(result.adapter_uri, result.checkpoint_uri, result.metrics), rank)
    return int(ExitCode.OK)


def _launch(plan: TrainPlan, argv: list[str]) -> ExitCode:
    from kubetune.trainer.launch import launch_workers

    for note in plan.notes:
        log.info("%s", note)
    return launch_workers(plan.world_size, argv)


@contextmanager
def _stop_on_signals(stop: StopSignal) -> Iterator[None]:
    """SIGTERM (and Ctrl-C) ask the loop to checkpoint and stop; a second Ctrl-C interrupts."""

    def on_signal(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning(
            "%s received: saving a checkpoint at the next step boundary, then stopping", name
        )
        stop.request(name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
