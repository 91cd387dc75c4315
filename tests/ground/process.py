"""Server processes of the test ground: started in their own process group, logged
to a file, stopped with everything they started.

Every server runs as the leader of a new session, so stopping it signals its whole
process group (SIGTERM, then SIGKILL after a grace period) and nothing it forked is
left behind. Processes started for a pytest session also get SIGTERM from the kernel
if the test process dies without tearing down (`setpriv --pdeathsig`); processes
started by `make cluster` outlive the command that started them and are stopped by
`make cluster-down` from the pids recorded in the state folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Where every failure message points a person who cannot build or run the ground here.
SETUP_HINT = (
    "Build the control-plane binaries with `make tools` (hack/build-tools.sh), or run the "
    "integration and e2e tiers against an existing cluster with "
    "KUBETUNE_TEST_KUBECONFIG=/path/to/kubeconfig (see docs/testing.md)."
)


class GroundError(RuntimeError):
    """A part of the test ground could not start or stopped working.

    The message names the part, says what went wrong, shows the end of its log, and
    ends with what to do.
    """

    def __init__(self, part: str, problem: str, *, log_tail: str = "", hint: str = SETUP_HINT):
        self.part = part
        text = f"test ground: {part}: {problem}"
        if log_tail:
            text += f"\n--- last lines of the {part} log ---\n{log_tail.rstrip()}\n---"
        if hint:
            text += f"\n{hint}"
        super().__init__(text)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a text file; empty when it does not exist."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 64 * 1024, 0))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _pdeathsig_prefix(signal_name: str) -> list[str]:
    # util-linux's setpriv sets PR_SET_PDEATHSIG and execs the server: the kernel then
    # sends the signal when the process that started it exits, even by SIGKILL.
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", signal_name, "--"] if setpriv else []


@dataclass
class ManagedProcess:
    """One server process of the ground and its log file.

    `start()` launches it; `stop()` signals its process group. A process recorded by
    an earlier command (`make cluster`) is re-created with `adopt()` to be stopped.
    """

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    pid: int | None = None
    _popen: subprocess.Popen[bytes] | None = None

    def start(self, *, tie_to_parent: bool = True, death_signal: str = "KILL") -> ManagedProcess:
        """Start the process in a new session, stdout and stderr to `log_path`.

        tie_to_parent: send it `death_signal` when the starting process dies (pytest
        killed); False for servers that must outlive the command that started them
        (`make cluster`). KILL by default: a graceful stop is pointless then, and an API
        server whose etcd died first never finishes stopping.
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [*(_pdeathsig_prefix(death_signal) if tie_to_parent else []), *map(str, self.argv)]
        log.debug("starting %s: %s", self.name, " ".join(argv))
        with self.log_path.open("ab") as out:
            try:
                self._popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=dict(self.env) if self.env is not None else None,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            except OSError as e:
                raise GroundError(self.name, f"cannot run {argv[0]}: {e}") from e
        self.pid = self._popen.pid
        return self

    @classmethod
    def adopt(cls, name: str, pid: int, argv: Sequence[str], log_path: Path) -> ManagedProcess:
        """A process started by an earlier command, known by its recorded pid."""
        return cls(name=name, argv=argv, log_path=log_path, pid=pid)

    def exit_code(self) -> int | None:
        """None while it runs; its exit status once it has exited."""
        if self._popen is not None:
            return self._popen.poll()
        if self.pid is not None and _is_ours(self.pid, self.argv):
            return None
        return -1

    @property
    def running(self) -> bool:
        return self.pid is not None and self.exit_code() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def check(self) -> None:
        """Raise GroundError (with the log tail) if the process has exited."""
        code = self.exit_code()
        if code is not None:
            raise GroundError(self.name, f"exited with status {code}", log_tail=self.log_tail())

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; wait for the leader."""
        if self.pid is None:
            return
        if self._popen is None and not _is_ours(self.pid, self.argv):
            return  # long gone; the pid may belong to someone else by now
        stop_process_group(self.pid, grace=grace, is_alive=lambda: self.exit_code() is None)
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=5)


def stop_process_group(
    pgid: int, *, grace: float, is_alive: Callable[[], bool] | None = None
) -> None:
    """SIGTERM a process group; SIGKILL whatever is left of it after `grace` seconds."""
    alive = is_alive or (lambda: _group_exists(pgid))
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive() and not _group_exists(pgid):
            return
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("not allowed to signal process group %d", pgid)
        return False
    return True


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _is_ours(pid: int, argv: Sequence[str]) -> bool:
    """Whether pid still runs the program we started (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    program = os.path.basename(str(argv[0])).encode() if argv else b""
    return any(os.path.basename(part) == program for part in cmdline)


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    part: str,
    processes: Sequence[ManagedProcess] = (),
    interval: float = 0.25,
) -> T:
    """Poll `check` until it returns something truthy; fail loudly on timeout.

    Fails at once, with the log tail, when one of `processes` exits meanwhile.
    Exceptions from `check` count as "not yet"; the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        for p in processes:
            p.check()
        try:
            result = check()
        except Exception as e:
            last_error = e
        else:
            if result:
                return result
        if time.monotonic() > deadline:
            problem = f"not {what} after {timeout:.0f}s"
            if last_error is not None:
                problem += f" (last error: {last_error})"
            log_tail = "\n".join(f"[{p.name}] {p.log_tail(20)}" for p in processes)
            raise GroundError(part, problem, log_tail=log_tail)
        time.sleep(interval)
