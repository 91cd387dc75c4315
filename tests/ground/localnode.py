"""The local node: a stand-in kubelet for one node, so that end-to-end tests run the
real trainer from the exact pod spec the operator created. TEST SUPPORT ONLY.

It carries what the trainer's pod uses (operator/builders.py) and no more. Like a
kubelet it registers its Node (Ready, cpu/memory/pods and `nvidia.com/gpu` capacity,
label `kubetune.dev/local-node=true`, taint `kubetune.dev/local-node=true:NoSchedule`)
and renews its Lease; watches the pods bound to it; runs each pod's container
`command` + `args` as a local process with the pod's environment (`value`,
`secretKeyRef`, `configMapKeyRef`, `envFrom`); mounts emptyDir and configMap volumes in
a private mount namespace; reports status (Pending/ContainerCreating or
CreateContainerConfigError → Running → Succeeded/Failed with `terminated.exitCode`,
`reason`, `signal` and the termination message, honouring `FallbackToLogsOnError`); on
deletion sends SIGTERM, then SIGKILL after the grace period, and then deletes the pod for
good, as a kubelet does.

What it is not: no images (the container's `command` must be given and runs from
this machine's PATH, the venv's bin first, so `kubetune` is the checkout's), no
isolation (same user, network and filesystem as the tests, apart from the mounts), no
resource limits, no probes, no restarts (restartPolicy Never only), no service-account
token, no kubelet API (so `kubectl logs`/`exec` cannot work: read logs with
`LocalNode.pod_log`). The termination message is the file named by
$KUBETUNE_TERMINATION_LOG, which the trainer honours (kubetune/api/contract.py), not
/dev/termination-log. One container per pod. Anything else in a pod spec (a fieldRef,
$(VAR) expansion, a PVC or secret volume, a subPath, a workingDir...) fails the pod with
reason UnsupportedByLocalNode rather than running differently.

Pods land here only if they select the node and tolerate its taint
(`LocalNode.scheduling`), so nothing else a test creates runs on this machine by
accident.

Run as a process: `python -m tests.ground.localnode --kubeconfig K --name N --state-dir D`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, CoordinationV1Api, CoreV1Api, VersionApi
from kubernetes.client.exceptions import ApiException
from kubernetes.config import new_client_from_config
from kubernetes.watch.watch import iter_resp_lines

from tests.ground.kwok import node_schedulable
from tests.ground.localpod import (
    API_TIMEOUT,
    NODE_IP,
    STRATEGIC_MERGE,
    NodeContext,
    Pod,
    PodRunner,
    now,
    probe_unshare,
    sweep_pod_processes,
)
from tests.ground.process import ManagedProcess, wait_until

log = logging.getLogger("local-node")

LABEL = "kubetune.dev/local-node"
TAINT_EFFECT = "NoSchedule"
LEASE_SECONDS = 40
RENEW_EVERY = 10.0
STATUS_EVERY = 30.0
WATCH_TIMEOUT = 60  # seconds per watch request; then it resumes from the last version


def ready_file(state_dir: Path) -> Path:
    """Written once the node is registered and its pod watch runs."""
    return state_dir / "ready"


# ---------------------------------------------------------------------------
# The agent (runs in the local-node process)


def python_folders() -> list[str]:
    """What a pod's `kubetune` needs of this machine: this venv, the Python it was made
    from, and the checkout it imports (an editable install); the outermost folders."""
    checkout = str(Path(__file__).resolve().parents[2])
    candidates = {sys.prefix, sys.base_prefix, checkout, *(p for p in sys.path if p)}
    folders = sorted({os.path.realpath(f) for f in candidates if os.path.isdir(f)})
    return [
        f for f in folders if not any(o != f and os.path.commonpath([f, o]) == o for o in folders)
    ]


class LocalNodeAgent:
    def __init__(
        self,
        api: ApiClient,
        *,
        name: str,
        state_dir: Path,
        capacity: Mapping[str, str],
        path_prepend: list[str],
        extra_env: Mapping[str, str],
        keep_visible: Sequence[str] = (),
    ):
        self.api = api
        self.core = CoreV1Api(api)
        self.name = name
        self.state_dir = state_dir
        self.capacity = dict(capacity)
        # Every pod this agent has run, finished ones included (a late event about a
        # finished pod must not start it again); test sessions run few pods.
        self.runners: dict[str, PodRunner] = {}
        self.stopping = threading.Event()
        self.ready_file = ready_file(state_dir)
        self.ready_file.unlink(missing_ok=True)
        self.context = NodeContext(
            name=name,
            api=api,
            pods_dir=state_dir / "pods",
            path_prepend=path_prepend,
            extra_env=extra_env,
            unshare=probe_unshare(),
            emit_event=self.emit_event,
            keep_visible=keep_visible,
        )
        if self.context.unshare is None:
            log.warning("no private mount namespaces here: pods with volume mounts will fail")

    # -- the Node and its heartbeat ---------------------------------------------

    def _node_status(self, version: str) -> dict[str, Any]:
        stamp = now()

        def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": self._started,
            }

        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "test-support local node",
                ),
                condition(
                    "DiskPressure", "False", "KubeletHasNoDiskPressure", "test-support local node"
                ),
                condition(
                    "PIDPressure", "False", "KubeletHasSufficientPID", "test-support local node"
                ),
                condition(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "test-support local node (tests/ground/localnode.py)",
                ),
            ],
            "addresses": [
                {"type": "InternalIP", "address": NODE_IP},
                {"type": "Hostname", "address": self.name},
            ],
            "nodeInfo": {
                "kubeletVersion": version,
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "local://processes",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "kubetune test-support local node",
                "kernelVersion": os.uname().release,
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    def register(self) -> None:
        self._started = now()
        self._version = VersionApi(self.api).get_code().git_version
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    LABEL: "true",
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
            "spec": {"taints": [{"key": LABEL, "value": "true", "effect": TAINT_EFFECT}]},
        }
        try:
            self.core.create_node(node)
            log.info("registered node %s", self.name)
        except ApiException as e:
            if e.status != 409:
                raise
            log.info("node %s already registered", self.name)
        self._update_status()
        self._renew_lease()

    def _update_status(self) -> None:
        self.core.patch_node_status(
            self.name,
            {"status": self._node_status(self._version)},
            _content_type=STRATEGIC_MERGE,
            _request_timeout=API_TIMEOUT,
        )

    def _renew_lease(self) -> None:
        leases = CoordinationV1Api(self.api)
        stamp = datetime.datetime.now(datetime.UTC)
        # A MicroTime needs all six fraction digits; the client's models format a
        # datetime with isoformat(), which drops a zero fraction.
        stamp = stamp if stamp.microsecond else stamp.replace(microsecond=1)
        try:
            leases.patch_namespaced_lease(
                self.name,
                "kube-node-lease",
                {"spec": {"renewTime": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}},
                _content_type="application/merge-patch+json",
                _request_timeout=API_TIMEOUT,
            )
        except ApiException as e:
            if e.status != 404:
                raise
            node = json.loads(self.core.read_node(self.name, _preload_content=False).data)
            leases.create_namespaced_lease(
                "kube-node-lease",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.name,
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": self.name,
                                "uid": node["metadata"]["uid"],
                            }
                        ],
                    },
                    "spec": {
                        "holderIdentity": self.name,
                        "leaseDurationSeconds": LEASE_SECONDS,
                        "renewTime": stamp,
                    },
                },
            )

    def _heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(RENEW_EVERY):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= STATUS_EVERY:
                    self._update_status()
                    last_status = time.monotonic()
            except Exception as e:
                log.warning("heartbeat failed: %s", e)

    def emit_event(self, pod: Pod, kind: str, reason: str, message: str) -> None:
        if self.context.shutting_down.is_set():
            return
        meta = pod["metadata"]
        stamp = now()
        try:
            self.core.create_namespaced_event(
                meta["namespace"],
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {
                        "generateName": f"{meta['name']}.",
                        "namespace": meta["namespace"],
                    },
                    "involvedObject": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": meta["name"],
                        "namespace": meta["namespace"],
                        "uid": meta["uid"],
                    },
                    "type": kind,
                    "reason": reason,
                    "message": message,
                    "source": {"component": "kubelet", "host": self.name},
                    "reportingComponent": "kubetune-local-node",
                    "reportingInstance": self.name,
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                    "count": 1,
                },
                _request_timeout=API_TIMEOUT,
            )
        except ApiException as e:
            log.debug("event %s for %s not recorded: %s", reason, meta["name"], e.status)

    # -- pods ---------------------------------------------------------------------

    def _handle(self, kind: str, pod: Pod) -> None:
        meta, phase = pod["metadata"], (pod.get("status") or {}).get("phase")
        uid = meta["uid"]
        runner = self.runners.get(uid)
        if kind == "DELETED":
            if runner is not None:
                runner.kill_now()
            return
        deleting = meta.get("deletionTimestamp") is not None
        if runner is None:
            if phase in ("Succeeded", "Failed"):
                return  # finished before this agent started (or before a relist)
            runner = self.runners[uid] = PodRunner(self.context, pod)
            if deleting:
                runner.request_stop(0)
            runner.start()
        elif deleting:
            runner.request_stop(meta.get("deletionGracePeriodSeconds"))

    def _list(self) -> str:
        body = json.loads(
            self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self.name}", _preload_content=False
            ).data
        )
        seen = set()
        for pod in body.get("items") or []:
            seen.add(pod["metadata"]["uid"])
            self._handle("MODIFIED", pod)
        for uid, runner in list(self.runners.items()):
            if uid not in seen:
                runner.kill_now()
        return body["metadata"]["resourceVersion"]

    def _watch_pods(self) -> None:
        version: str | None = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    version = self._list()
                    self.ready_file.touch()
                response = self.core.list_pod_for_all_namespaces(
                    field_selector=f"spec.nodeName={self.name}",
                    watch=True,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_TIMEOUT,
                    _preload_content=False,
                )
                try:
                    for line in iter_resp_lines(response):
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            log.info("watch ended: %s", obj.get("message"))
                            version = None  # expired: relist
                            break
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self._handle(event["type"], obj)
                finally:
                    response.release_conn()
            except Exception as e:
                if self.stopping.is_set():
                    return
                log.warning("pod watch failed (%s); listing again", e)
                version = None
                time.sleep(1)

    def run(self) -> None:
        self.register()
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._watch_pods, name="pod watch", daemon=True).start()
        self.stopping.wait()

    def shutdown(self) -> None:
        """Stop every pod process (quickly: the node is going away with the ground)."""
        self.stopping.set()
        self.context.shutting_down.set()
        for runner in self.runners.values():
            runner.kill_now()
        deadline = time.monotonic() + 10
        for runner in self.runners.values():
            runner.finished.wait(max(deadline - time.monotonic(), 0))
        sweep_pod_processes(self.context.pods_dir)
        self.context.remove_mountpoints()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.ground.localnode", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--cpu", default=str(os.cpu_count() or 2))
    parser.add_argument("--memory", default="16Gi")
    parser.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="nvidia.com/gpu capacity to advertise (nothing backs it)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="add to every pod's environment (repeatable)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    capacity = {"cpu": args.cpu, "memory": args.memory, "pods": "32", "ephemeral-storage": "100Gi"}
    if args.gpus:
        capacity["nvidia.com/gpu"] = str(args.gpus)
    agent = LocalNodeAgent(
        new_client_from_config(str(args.kubeconfig)),
        name=args.name,
        state_dir=args.state_dir,
        capacity=capacity,
        # The venv's bin first: a pod's `kubetune` is this checkout's.
        path_prepend=[os.path.dirname(sys.executable)],
        extra_env=dict(e.split("=", 1) for e in args.env),
        keep_visible=python_folders(),
    )

    def stop(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        agent.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        agent.run()
    finally:
        agent.shutdown()
        log.info("stopped")


# ---------------------------------------------------------------------------
# The handle tests use (in the test process)


class LocalNode:
    """The local node as the tests see it: start/stop its process, place pods on it,
    read what its pods wrote."""

    def __init__(
        self,
        state_dir: Path,
        *,
        name: str = "local-node",
        gpus: int = 1,
        extra_env: Mapping[str, str] | None = None,
    ):
        self.name = name
        self.state_dir = state_dir
        self.gpus = gpus
        self.extra_env = dict(extra_env or {})
        self.process: ManagedProcess | None = None

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    @property
    def node_selector(self) -> dict[str, str]:
        # The hostname pins this node where another ground's local node shares the cluster.
        return {LABEL: "true", "kubernetes.io/hostname": self.name}

    @property
    def tolerations(self) -> list[dict[str, str]]:
        return [{"key": LABEL, "operator": "Exists", "effect": TAINT_EFFECT}]

    @property
    def scheduling(self) -> dict[str, Any]:
        """Pod spec fields (camelCase) that place a pod here: merge into a pod spec."""
        return {"nodeSelector": self.node_selector, "tolerations": self.tolerations}

    def start(self, kubeconfig: Path, *, tie_to_parent: bool = True) -> ManagedProcess:
        argv = [
            sys.executable,
            "-m",
            "tests.ground.localnode",
            "--kubeconfig",
            str(kubeconfig),
            "--name",
            self.name,
            "--state-dir",
            str(self.state_dir),
            "--gpus",
            str(self.gpus),
        ]
        for key, value in self.extra_env.items():
            argv += ["--env", f"{key}={value}"]
        repo_root = Path(__file__).resolve().parents[2]
        self.process = ManagedProcess(
            "local-node", argv, self.state_dir / "local-node.log", cwd=repo_root
        )
        # TERM: it stops its pods' processes on the way out.
        return self.process.start(tie_to_parent=tie_to_parent, death_signal="TERM")

    def wait_ready(self, core: CoreV1Api, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if not ready_file(self.state_dir).exists():
                return False
            return node_schedulable(core.read_node(self.name))

        wait_until(
            ready,
            timeout=timeout,
            what="Ready",
            part="local node",
            processes=[self.process] if self.process else [],
        )

    def check(self) -> None:
        """GroundError with its log tail if the local-node process has died."""
        if self.process is not None:
            self.process.check()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=15)
        sweep_pod_processes(self.pods_dir)

    def pod_dir(self, namespace: str, name: str) -> Path:
        """The folder of the newest pod with this name (logs, termination-log, volumes)."""
        runs = sorted(
            (self.pods_dir / namespace / name).glob("*/"), key=lambda p: p.stat().st_mtime
        )
        if not runs:
            raise FileNotFoundError(f"the local node never ran a pod {namespace}/{name}")
        return runs[-1]

    def pod_log(self, namespace: str, name: str, container: str | None = None) -> str:
        """What the pod's container wrote to stdout/stderr (its latest run)."""
        folder = self.pod_dir(namespace, name)
        if container is None:
            logs = list(folder.glob("*.log"))
            if len(logs) != 1:
                raise FileNotFoundError(
                    f"{folder}: expected one container log, found {[p.name for p in logs]}"
                )
            return logs[0].read_text(errors="replace")
        return (folder / f"{container}.log").read_text(errors="replace")


if __name__ == "__main__":
    main()
