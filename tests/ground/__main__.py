"""The test ground for a person: `make cluster` / `make cluster-down`.

    python -m tests.ground up      start the control plane, kwok's GPU nodes, the local
                                   node and SeaweedFS (S3); print how to use them; leave
                                   them running
    python -m tests.ground status  say what runs
    python -m tests.ground down    stop everything `up` started and remove its state

State (pids, kubeconfig, logs, data) lives in .kubetune/cluster/ in the checkout
(gitignored), or in --state-dir. `source .kubetune/cluster/env` sets KUBECONFIG and
PATH (kubectl, helm) in a shell.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tests.ground.ground import Ground
from tests.ground.localpod import sweep_pod_processes
from tests.ground.process import GroundError, ManagedProcess
from tests.ground.s3 import remove_sockets
from tests.ground.tools import REPO_ROOT

DEFAULT_STATE_DIR = REPO_ROOT / ".kubetune" / "cluster"
STATE_FILE = "state.json"
ENV_FILE = "env"


def _recorded(state_dir: Path) -> tuple[dict[str, Any], list[ManagedProcess]] | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    processes = [
        ManagedProcess.adopt(p["name"], p["pid"], p["argv"], Path(p["log"]))
        for p in state["processes"]
    ]
    return state, processes


def _describe(state: dict[str, Any], state_dir: Path) -> str:
    env_file = state_dir / ENV_FILE
    lines = [
        f"  export KUBECONFIG={state['kubeconfig']}",
        f"  export PATH={':'.join(state['path'])}:$PATH",
        f"  (or: source {env_file})",
        "  kubectl get nodes",
        "",
        f"GPU nodes (kwok): {', '.join(state['gpu_nodes'])}; CPU node: {', '.join(state['cpu_nodes'])}",
        f"local node: {state['local_node']} (pods selecting it run here; logs under {state['local_node_pods']})",
    ]
    s3 = state.get("s3")
    if s3:
        lines += [
            "",
            f"S3 (SeaweedFS): {s3['url']}, region {s3['region']}, path-style addressing; admin identity:",
        ]
        lines += [f"  {k}={v}" for k, v in s3["env"].items()]
        lines += ["read-only identity:"] + [f"  {k}={v}" for k, v in s3["reader_env"].items()]
    lines += ["", f"logs: {state_dir}/**/*.log", "stop: make cluster-down"]
    return "\n".join(lines)


def up(state_dir: Path) -> int:
    recorded = _recorded(state_dir)
    if recorded is not None:
        state, processes = recorded
        if all(p.running for p in processes):
            print(
                f"The test ground is already running ({state_dir}):\n{_describe(state, state_dir)}"
            )
            return 0
        print("A previous test ground is partly down; stopping what is left of it first.")
        down(state_dir, quiet=True)
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    started = time.monotonic()
    ground = Ground(state_dir, tie_to_parent=False)
    try:
        cluster = ground.cluster()
        kwok = ground.kwok()
        local_node = ground.local_node()
        s3 = ground.s3()
    except BaseException as e:
        ground.stop()
        if isinstance(e, GroundError):
            print(e, file=sys.stderr)
            return 1
        raise
    state: dict[str, Any] = {
        "processes": [
            {"name": p.name, "pid": p.pid, "argv": list(map(str, p.argv)), "log": str(p.log_path)}
            for p in ground.processes
        ],
        "kubeconfig": str(cluster.kubeconfig),
        "path": [str(d) for d in cluster.tools.bin_dirs],
        "gpu_nodes": [n.name for n in kwok.gpu_nodes],
        "cpu_nodes": [n.name for n in kwok.nodes if not n.gpus],
        "local_node": local_node.name,
        "local_node_pods": str(local_node.pods_dir),
        "local_node_state": str(local_node.state_dir),
        "s3": {
            "url": s3.endpoint.url,
            "region": s3.endpoint.region,
            "ports": list(s3.ports.values()),
            "env": {"AWS_ENDPOINT_URL": s3.endpoint.url, **s3.endpoint.env()},
            "reader_env": s3.endpoint.env(reader=True),
        },
    }
    (state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    (state_dir / STATE_FILE).chmod(0o600)  # it holds the S3 keys
    env = {"KUBECONFIG": state["kubeconfig"]}
    if state.get("s3"):
        env.update(state["s3"]["env"])
    exports = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    exports.append(f'export PATH={shlex.quote(":".join(state["path"]))}:"$PATH"')
    (state_dir / ENV_FILE).write_text("\n".join(exports) + "\n")
    (state_dir / ENV_FILE).chmod(0o600)
    print(
        f"The test ground is up after {time.monotonic() - started:.1f}s ({state_dir}):\n{_describe(state, state_dir)}"
    )
    return 0


def down(state_dir: Path, *, quiet: bool = False) -> int:
    recorded = _recorded(state_dir)
    if recorded is None:
        if not quiet:
            print(f"No test ground recorded in {state_dir}; nothing to stop.")
        return 0
    state, processes = recorded
    for process in reversed(processes):
        process.stop()
    sweep_pod_processes(Path(state["local_node_pods"]))
    if state.get("s3"):
        remove_sockets(state["s3"]["ports"])
    shutil.rmtree(state_dir)
    if not quiet:
        print(f"Stopped the test ground ({len(processes)} processes) and removed {state_dir}.")
    return 0


def status(state_dir: Path) -> int:
    recorded = _recorded(state_dir)
    if recorded is None:
        print(f"No test ground recorded in {state_dir}.")
        return 1
    state, processes = recorded
    for p in processes:
        print(f"  {p.name:<24} pid {p.pid:<8} {'running' if p.running else 'NOT RUNNING'}")
    print(_describe(state, state_dir))
    return 0 if all(p.running for p in processes) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.ground", description="The kubetune test ground, by hand."
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    state_dir = args.state_dir.resolve()
    return {"up": up, "down": down, "status": status}[args.command](state_dir)


if __name__ == "__main__":
    sys.exit(main())
