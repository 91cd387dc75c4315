"""Data-parallel launch: `resources.gpus > 1` runs one worker per GPU under torchrun's agent.

`kubetune train` stays the pod's single command. When the plan asks for several
processes and this process is not already a worker, it becomes the launcher: it
starts the same command line `world_size` times through torchrun's elastic agent
(`torch.distributed.launcher.elastic_launch`, what the `torchrun --standalone` CLI
runs: a local c10d rendezvous on a free port, RANK/LOCAL_RANK/WORLD_SIZE set for each
worker), waits for them, and exits with the code that explains the run
(`outcome.pick`), writing the termination message once.

Two things differ from the plain `torchrun` CLI, both for the contract:
- exit codes: the agent reports a failed worker as a ChildFailedError, and a SIGTERM
  to itself as an exception, never with the worker's exit code. Workers therefore
  leave their outcome (code and message) in a folder the launcher reads.
- SIGTERM: the agent forwards it to the workers, which checkpoint and exit 75. It
  waits `SHUTDOWN_TIMEOUT` seconds for them (torchrun's default is 30 s), longer than
  a checkpoint upload takes; Kubernetes' grace period is the real bound.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import uuid
from pathlib import Path

from kubetune.api.contract import ExitCode
from kubetune.trainer.outcome import (
    OUTCOME_DIR_ENV,
    Outcome,
    pick,
    read_outcomes,
    write_termination_log,
)

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 300  # seconds the agent waits for workers after forwarding a signal


def launch_workers(world_size: int, argv: list[str]) -> ExitCode:
    """Run this program again (`python -m kubetune <argv>`) as `world_size` workers.

    Returns the run's exit code. The workers run the module this process was started
    as (`python -m ...`), and `kubetune` when started as the `kubetune` script.
    """
    import os

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with tempfile.TemporaryDirectory(prefix="kubetune-outcomes-") as folder:
        os.environ[OUTCOME_DIR_ENV] = folder
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=world_size,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,  # restarts are the Job's business (backoffLimit), not the agent's
            monitor_interval=0.5,
            logs_specs=DefaultLogsSpecs(log_dir=os.devnull),  # workers write to our stderr
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        log.info("starting %d data-parallel workers", world_size)
        missing: dict[int, str] = {}
        try:
            elastic_launch(config, entrypoint=sys.executable)("-m", _main_module(), *argv)
        except ChildFailedError as e:
            for rank, failure in e.failures.items():
                missing[rank] = f"exited with code {failure.exitcode}" + (
                    f" (signal {failure.signal_name()})" if failure.exitcode < 0 else ""
                )
        except SignalException as e:
            log.warning(
                "stopped by %s; the workers were asked to checkpoint and stop", e.sigval.name
            )
        outcomes = read_outcomes(Path(folder))
        for rank in outcomes:
            missing.pop(rank, None)
        if not outcomes and not missing:
            missing[0] = "ended without reporting an outcome"
        chosen: Outcome = pick(outcomes, missing)
        del os.environ[OUTCOME_DIR_ENV]
    write_termination_log(chosen.message)
    return chosen.exit_code


def _main_module() -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    if not name or name.endswith(".__main__"):
        return "kubetune"
    return name
