"""hack/docker-engine.sh clears what a killed engine left behind before it starts dockerd.

An engine killed without shutting down (a machine or session that ended under it) leaves
its pid files. dockerd trusts its containerd's pid file: when an unrelated process has
taken that pid since, the new dockerd waits for a containerd that does not exist and
gives up. These run the script's --clear-stale-state step against a scratch exec root
(no root, no engine needed) with real processes behind the pid files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "hack/docker-engine.sh"


@pytest.fixture
def exec_root(tmp_path: Path) -> Path:
    (tmp_path / "run/containerd").mkdir(parents=True)
    return tmp_path / "run"


def _clear(exec_root: Path, state: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KUBETUNE_DOCKER_EXEC_ROOT": str(exec_root),
        "KUBETUNE_DOCKERD_PIDFILE": str(exec_root / "docker.pid"),
        "KUBETUNE_DOCKER_STATE": str(state),
    }
    return subprocess.run(
        ["bash", str(SCRIPT), "--clear-stale-state"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )


@pytest.fixture
def process_named(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Starts a long sleep whose command name is the given one (a copy of sleep)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        binary = tmp_path / "bin" / name
        binary.parent.mkdir(exist_ok=True)
        shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
        process = subprocess.Popen([str(binary), "300"])
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_a_pid_file_naming_an_unrelated_live_process_is_removed(
    exec_root: Path, tmp_path: Path, process_named: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    unrelated = process_named("python-worker")
    pidfile = exec_root / "containerd/containerd.pid"
    pidfile.write_text(str(unrelated.pid))

    result = _clear(exec_root, tmp_path / "state")

    assert not pidfile.exists()
    assert unrelated.poll() is None, "an unrelated process must never be signalled"
    assert f"names pid {unrelated.pid}, which is python-worker, not containerd" in result.stderr


def test_a_pid_file_naming_a_dead_process_is_removed(exec_root: Path, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (exec_root / "docker.pid").write_text(str(dead.pid))

    result = _clear(exec_root, tmp_path / "state")

    assert not (exec_root / "docker.pid").exists()
    assert "not running, not dockerd" in result.stderr


def test_a_containerd_without_its_socket_is_stopped(
    exec_root: Path, tmp_path: Path, process_named: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    orphan = process_named("containerd")
    (exec_root / "containerd/containerd.pid").write_text(str(orphan.pid))

    result = _clear(exec_root, tmp_path / "state")

    assert orphan.wait(timeout=15) != 0
    assert not (exec_root / "containerd/containerd.pid").exists()
    assert "has no socket" in result.stderr


def test_a_live_engine_is_left_alone(
    exec_root: Path, tmp_path: Path, process_named: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    dockerd = process_named("dockerd")
    (exec_root / "docker.pid").write_text(str(dockerd.pid))

    result = _clear(exec_root, tmp_path / "state")

    assert (exec_root / "docker.pid").read_text() == str(dockerd.pid)
    assert dockerd.poll() is None
    assert result.stderr == ""
