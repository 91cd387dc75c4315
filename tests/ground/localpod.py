"""One pod on the local node: its environment, its volumes, its process, its status.

Test support only (see tests/ground/localnode.py for what the local node is and is
not). It carries what the trainer's pod uses (operator/builders.py: the Job's pod and
the Validating step's) and no more; anything else in a pod spec fails the pod at once
with UnsupportedPod, so that nothing runs differently from what its spec says. Pods are
handled as the raw JSON the API serves, so that what runs is exactly the pod spec the
operator created, field names and all.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Pod = dict[str, Any]

# The environment variable through which the trainer finds its termination-message
# file when no container runtime provides /dev/termination-log (api/contract.py).
TERMINATION_LOG_ENV = "KUBETUNE_TERMINATION_LOG"
# Marks every process the local node starts, so a sweep after a crash kills only ours.
POD_UID_ENV = "KUBETUNE_LOCAL_POD_UID"

# What the kubelet keeps of a termination message and of the log fallback.
TERMINATION_MESSAGE_MAX_BYTES = 4096
FALLBACK_LOG_MAX_LINES = 80
FALLBACK_LOG_MAX_BYTES = 2048

DEFAULT_GRACE_SECONDS = 30
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
API_TIMEOUT = 10  # seconds for each API request: a hung request must not hang a pod's worker


class ContainerConfigError(Exception):
    """A reference the container needs is missing (the kubelet's
    CreateContainerConfigError): the pod waits and is retried, as on a real node."""


class UnsupportedPod(Exception):
    """Something the trainer's pod does not use, so this stand-in does not do it (an
    image entrypoint, a fieldRef, a hostPath volume...): the pod fails at once with this
    message rather than running differently."""


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------
# Environment

# Kubernetes expands $(VAR) in env values, command and args, and turns $$ into $. The
# trainer's pod has neither, so the local node does not expand: it refuses them.
_EXPANDABLE = re.compile(r"\$\(|\$\$")


def _literal(text: str, where: str) -> str:
    if _EXPANDABLE.search(text):
        raise UnsupportedPod(
            f"{where}: $(VAR) references and $$ are not expanded by the local node"
        )
    return text


class References:
    """Reads the Secrets and ConfigMaps a pod refers to (once per pod start)."""

    def __init__(self, core: CoreV1Api, namespace: str):
        self.core = core
        self.namespace = namespace
        self._cache: dict[tuple[str, str], dict[str, bytes] | None] = {}

    def data(self, kind: str, name: str) -> dict[str, bytes] | None:
        """The decoded data of a Secret or ConfigMap; None when it does not exist."""
        key = (kind, name)
        if key not in self._cache:
            self._cache[key] = self._read(kind, name)
        return self._cache[key]

    def _read(self, kind: str, name: str) -> dict[str, bytes] | None:
        read = (
            self.core.read_namespaced_secret
            if kind == "Secret"
            else self.core.read_namespaced_config_map
        )
        try:
            body = json.loads(read(name, self.namespace, _preload_content=False).data)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        if kind == "Secret":
            return {k: base64.b64decode(v) for k, v in (body.get("data") or {}).items()}
        values = {k: v.encode() for k, v in (body.get("data") or {}).items()}
        values.update({k: base64.b64decode(v) for k, v in (body.get("binaryData") or {}).items()})
        return values

    def required(self, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        """The data of a Secret or ConfigMap; empty when optional and missing."""
        data = self.data(kind, name)
        if data is None:
            if optional:
                return {}
            raise ContainerConfigError(f'{kind.lower()} "{name}" not found')
        return data

    def value(self, kind: str, ref: Mapping[str, Any]) -> str | None:
        """One key (secretKeyRef/configMapKeyRef); None when optional and missing."""
        name, key, optional = ref.get("name", ""), ref["key"], bool(ref.get("optional"))
        data = self.required(kind, name, optional)
        if key not in data:
            if optional:
                return None
            raise ContainerConfigError(f"couldn't find key {key} in {kind} {self.namespace}/{name}")
        return data[key].decode(errors="surrogateescape")


def container_env(container: Mapping[str, Any], refs: References) -> dict[str, str]:
    """The variables a container defines: envFrom (Secrets and ConfigMaps, with prefix),
    then env (a value, a secretKeyRef or a configMapKeyRef)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref = (
            ("Secret", source["secretRef"])
            if source.get("secretRef")
            else ("ConfigMap", source["configMapRef"])
        )
        data = refs.required(kind, ref.get("name", ""), bool(ref.get("optional")))
        for key, value in data.items():
            env[source.get("prefix", "") + key] = value.decode(errors="surrogateescape")
    for var in container.get("env") or []:
        name, source = var["name"], var.get("valueFrom")
        if source is None:
            env[name] = _literal(var.get("value", ""), f"env {name}")
            continue
        if "secretKeyRef" in source:
            value = refs.value("Secret", source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = refs.value("ConfigMap", source["configMapKeyRef"])
        else:
            raise UnsupportedPod(f"env {name}: valueFrom {sorted(source)} is not supported")
        if value is not None:
            env[name] = value
    return env


# ---------------------------------------------------------------------------
# Volumes


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool


def prepare_mounts(
    pod: Pod, container: Mapping[str, Any], refs: References, volumes_dir: Path
) -> list[Mount]:
    """Materialise the volumes the container mounts under `volumes_dir`: the trainer's
    emptyDirs (medium: Memory is not a tmpfs here; sizeLimit is not enforced) and its
    CA-bundle configMap (its keys, or its `items`, written as files). Anything else
    (a PVC, a secret volume, a subPath...) fails the pod with UnsupportedPod.
    """
    by_name = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts = []
    for mount in container.get("volumeMounts") or []:
        volume = by_name.get(mount["name"])
        if volume is None:
            raise UnsupportedPod(f"volumeMount {mount['name']!r} has no volume")
        if mount.get("subPath"):
            raise UnsupportedPod(f"volumeMount {mount['name']!r}: subPath is not supported")
        folder = volumes_dir / volume["name"]
        if "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
        elif "configMap" in volume:
            _write_keys(folder, volume["configMap"], refs)
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise UnsupportedPod(
                f"volume {volume['name']!r}: {kinds} volumes are not supported by the local node"
            )
        mounts.append(Mount(folder, mount["mountPath"], bool(mount.get("readOnly"))))
    return mounts


def _write_keys(folder: Path, source: Mapping[str, Any], refs: References) -> None:
    name, optional = source.get("name", ""), bool(source.get("optional"))
    data = refs.required("ConfigMap", name, optional)
    items = source.get("items")
    files = {i["path"]: i["key"] for i in items} if items else {k: k for k in data}
    folder.mkdir(parents=True, exist_ok=True)
    for path, key in files.items():
        if key not in data:
            if optional:
                continue
            raise ContainerConfigError(
                f"couldn't find key {key} in ConfigMap {refs.namespace}/{name}"
            )
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[key])


# Runs inside a private mount namespace (unshare --mount): bind-mounts each volume's
# folder at its target (made if missing inside what is mounted by then), remounts the
# read-only ones, then changes into the pod's HOME and execs the container's command.
# The targets are made beforehand on this machine too (NodeContext.make_mountpoint: the
# mounts are private, the folders are not).
_MOUNT_SCRIPT = r"""
set -e
workdir="$1"; shift
while [ "$1" != "--" ]; do
  case "$1" in
    bind) mkdir -p "$3"; mount --bind "$2" "$3"; shift 3 ;;
    readonly) mount -o remount,bind,ro "$2"; shift 2 ;;
    *) echo "local-node-mounts: unknown operation $1" >&2; exit 1 ;;
  esac
done
shift
cd "$workdir"
exec "$@"
"""


def _covers(target: str, path: str) -> bool:
    """Whether a mount at `target` would hide `path` (both absolute)."""
    path, target = os.path.realpath(path), os.path.realpath(target)
    return os.path.commonpath([path, target]) == target


def mount_operations(
    mounts: list[Mount], pod_folder: Path, keep_visible: Sequence[str]
) -> list[str]:
    """The mount script's operations: outer targets first, as container runtimes do,
    then the read-only remounts.

    A volume mounted over the pod's folder (its HOME and termination-message file) or
    over this machine's Python and checkout (`keep_visible`: the local node runs no
    images) would hide what the pod needs; the trainer's volumes never do, so such a
    pod fails with UnsupportedPod.
    """
    for mount in mounts:
        for needed in [str(pod_folder), *keep_visible]:
            if _covers(mount.target, needed):
                raise UnsupportedPod(
                    f"a volume at {mount.target} would hide {needed}, which the local node's "
                    "pods run from"
                )
    operations: list[str] = []
    for mount in sorted(mounts, key=lambda m: len(Path(m.target).parts)):
        operations += ["bind", str(mount.source), mount.target]
    for mount in mounts:
        if mount.read_only:
            operations += ["readonly", mount.target]
    return operations


def wrap_with_mounts(
    argv: list[str],
    mounts: list[Mount],
    unshare: list[str] | None,
    workdir: str,
    pod_folder: Path,
    keep_visible: Sequence[str] = (),
) -> list[str]:
    """argv run in a private mount namespace with `mounts` bind-mounted, or argv itself."""
    if not mounts:
        return argv
    if unshare is None:
        raise UnsupportedPod(
            "volume mounts need a private mount namespace (unshare --mount), which this "
            "machine does not allow the local node to create"
        )
    operations = mount_operations(mounts, pod_folder, keep_visible)
    return [
        *unshare,
        "/bin/sh",
        "-c",
        _MOUNT_SCRIPT,
        "local-node-mounts",
        workdir,
        *operations,
        "--",
        *argv,
    ]


def probe_unshare() -> list[str] | None:
    """The unshare invocation that works here: as root, or in a user namespace; None if neither."""
    for candidate in (
        ["unshare", "--mount", "--propagation", "private", "--"],
        ["unshare", "--mount", "--map-root-user", "--propagation", "private", "--"],
    ):
        try:
            ok = (
                subprocess.run([*candidate, "true"], capture_output=True, timeout=10).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return candidate
    return None


# ---------------------------------------------------------------------------
# Status

NODE_IP = "127.0.0.1"


def _conditions(ready: bool, reason: str | None) -> list[dict[str, Any]]:
    stamp = now()

    def condition(kind: str, status: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": kind,
            "status": "True" if status else "False",
            "lastTransitionTime": stamp,
        }
        if not status and reason:
            body["reason"] = reason
        return body

    return [
        condition("PodReadyToStartContainers", ready or reason is None),
        condition("Initialized", True),
        condition("ContainersReady", ready),
        condition("Ready", ready),
    ]


def _pod_status(
    pod: Pod, phase: str, conditions: list[dict[str, Any]], started: str | None = None, **more: Any
) -> Pod:
    return {
        "phase": phase,
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "startTime": (pod.get("status") or {}).get("startTime") or started or now(),
        "conditions": conditions,
        **more,
    }


def _container_status(
    container: Mapping[str, Any], state: dict[str, Any], *, pid: int | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": "running" in state,
        "started": "running" in state,
        "restartCount": 0,  # the trainer's pods never restart (restartPolicy: Never)
        "state": state,
        "lastState": {},
    }
    if pid is not None:
        status["containerID"] = f"local://{pid}"
    return status


def waiting_status(
    pod: Pod, container: Mapping[str, Any], reason: str, message: str = ""
) -> dict[str, Any]:
    state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
    return _pod_status(
        pod,
        "Pending",
        _conditions(False, "ContainersNotReady"),
        containerStatuses=[_container_status(container, state)],
    )


def running_status(
    pod: Pod, container: Mapping[str, Any], *, started_at: str, pid: int
) -> dict[str, Any]:
    state = {"running": {"startedAt": started_at}}
    return _pod_status(
        pod,
        "Running",
        _conditions(True, None),
        started_at,
        podIP=NODE_IP,
        podIPs=[{"ip": NODE_IP}],
        containerStatuses=[_container_status(container, state, pid=pid)],
    )


@dataclass(frozen=True)
class Termination:
    exit_code: int
    started_at: str
    finished_at: str
    message: str
    pid: int

    @property
    def state(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": "Completed" if self.exit_code == 0 else "Error",
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "containerID": f"local://{self.pid}",
        }
        if self.exit_code > 128:
            body["signal"] = self.exit_code - 128
        if self.message:
            body["message"] = self.message
        return {"terminated": body}


def terminated_status(pod: Pod, container: Mapping[str, Any], end: Termination) -> dict[str, Any]:
    succeeded = end.exit_code == 0
    return _pod_status(
        pod,
        "Succeeded" if succeeded else "Failed",
        _conditions(False, "PodCompleted" if succeeded else "PodFailed"),
        end.started_at,
        podIP=NODE_IP,
        podIPs=[{"ip": NODE_IP}],
        containerStatuses=[_container_status(container, end.state, pid=end.pid)],
    )


def failed_status(
    pod: Pod, container: Mapping[str, Any] | None, reason: str, message: str
) -> dict[str, Any]:
    """A pod the local node cannot run at all."""
    more: dict[str, Any] = {}
    if container is not None:
        stamp = now()
        state = {
            "terminated": {
                "exitCode": 128,
                "reason": reason,
                "message": message,
                "startedAt": stamp,
                "finishedAt": stamp,
            }
        }
        more["containerStatuses"] = [_container_status(container, state)]
    return _pod_status(
        pod, "Failed", _conditions(False, "PodFailed"), reason=reason, message=message, **more
    )


def termination_message(
    container: Mapping[str, Any], message_file: Path, log_file: Path, exit_code: int
) -> str:
    """What the kubelet reports: the message file (4 KiB at most), or with
    FallbackToLogsOnError and a failure, the tail of the log (80 lines, 2 KiB)."""
    try:
        message = message_file.read_bytes()[:TERMINATION_MESSAGE_MAX_BYTES].decode(errors="replace")
    except FileNotFoundError:
        message = ""
    if (
        message
        or exit_code == 0
        or container.get("terminationMessagePolicy") != "FallbackToLogsOnError"
    ):
        return message
    try:
        lines = log_file.read_bytes().splitlines(keepends=True)[-FALLBACK_LOG_MAX_LINES:]
    except FileNotFoundError:
        return ""
    return b"".join(lines)[-FALLBACK_LOG_MAX_BYTES:].decode(errors="replace")


# ---------------------------------------------------------------------------
# The pod's lifecycle


@dataclass
class NodeContext:
    """What a pod runner needs from its node."""

    name: str
    api: ApiClient
    pods_dir: Path
    path_prepend: list[str]
    extra_env: Mapping[str, str]
    unshare: list[str] | None
    emit_event: Callable[[Pod, str, str, str], None]
    # Folders a pod's process needs from this machine (its Python, this checkout): a
    # volume mounted over one of them fails the pod.
    keep_visible: list[str] = field(default_factory=list)
    # Set when the node stops: pods are killed without telling the API (it may be
    # going away too, and a request to it must not hold up the kill).
    shutting_down: threading.Event = field(default_factory=threading.Event)
    # Mount points created on this machine's filesystem, removed when the node stops.
    created_mountpoints: list[Path] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def make_mountpoint(self, target: Path) -> None:
        """Create a mount's target folder if missing, remembering what was created so
        that `remove_mountpoints` can tidy up."""
        with self._lock:
            missing = [p for p in [target, *target.parents] if not p.exists()]
            target.mkdir(parents=True, exist_ok=True)
            self.created_mountpoints.extend(reversed(missing))

    def remove_mountpoints(self) -> None:
        with self._lock:
            for path in reversed(self.created_mountpoints):
                try:
                    path.rmdir()
                except OSError as e:
                    log.warning("could not remove mount point %s: %s", path, e)
            self.created_mountpoints.clear()


@dataclass
class PodRunner:
    """Runs one pod's container as a local process and reports its status, in a thread.

    The API's pod is the single source of truth: the runner reads the spec once,
    then only reacts to deletion (`request_stop`), like a kubelet's pod worker.
    """

    node: NodeContext
    pod: Pod
    _stop: threading.Event = field(default_factory=threading.Event)
    _grace: float = DEFAULT_GRACE_SECONDS
    _process: subprocess.Popen[bytes] | None = None
    _command: list[str] = field(default_factory=list)
    _thread: threading.Thread | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def uid(self) -> str:
        return self.pod["metadata"]["uid"]

    @property
    def key(self) -> str:
        meta = self.pod["metadata"]
        return f"{meta['namespace']}/{meta['name']}"

    @property
    def folder(self) -> Path:
        meta = self.pod["metadata"]
        return self.node.pods_dir / meta["namespace"] / meta["name"] / meta["uid"]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"pod {self.key}", daemon=True)
        self._thread.start()

    def request_stop(self, grace_seconds: float | None) -> None:
        """The pod is being deleted: SIGTERM now, SIGKILL after the grace period."""
        if not self._stop.is_set():
            self._grace = DEFAULT_GRACE_SECONDS if grace_seconds is None else grace_seconds
            log.info("pod %s: deletion requested (grace %ss)", self.key, self._grace)
            self._stop.set()

    def kill_now(self) -> None:
        """The pod is gone from the API, or the node is stopping: stop at once."""
        self._grace = min(self._grace, 2.0)
        self._stop.set()

    # -- the thread ------------------------------------------------------------

    @property
    def _core(self) -> CoreV1Api:
        return CoreV1Api(self.node.api)

    def _patch_status(self, status: dict[str, Any]) -> None:
        if self.node.shutting_down.is_set():
            return
        meta = self.pod["metadata"]
        try:
            self._core.patch_namespaced_pod_status(
                meta["name"],
                meta["namespace"],
                {"status": status},
                _content_type=STRATEGIC_MERGE,
                _request_timeout=API_TIMEOUT,
            )
        except ApiException as e:
            if e.status != 404:  # deleted meanwhile: nothing left to report to
                log.warning("pod %s: status update failed: %s %s", self.key, e.status, e.body)

    def _finalize_deletion(self) -> None:
        """What a kubelet does once a deleted pod's containers are gone: delete it for good."""
        if self.node.shutting_down.is_set():
            return
        meta = self.pod["metadata"]
        try:
            self._core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                _request_timeout=API_TIMEOUT,
            )
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("pod %s: final delete failed: %s %s", self.key, e.status, e.body)

    def _run(self) -> None:
        try:
            self._lifecycle()
        except Exception as e:
            # A bug here must show as a failed pod, not as one that runs forever.
            log.exception("pod %s: the local node failed to run it", self.key)
            containers = self.pod["spec"].get("containers") or [None]
            self._patch_status(
                failed_status(self.pod, containers[0], "LocalNodeError", f"{type(e).__name__}: {e}")
            )
        finally:
            self.finished.set()

    def _lifecycle(self) -> None:
        spec = self.pod["spec"]
        containers = spec.get("containers") or []
        container = containers[0] if containers else None
        try:
            if len(containers) != 1 or spec.get("initContainers"):
                raise UnsupportedPod(
                    "the local node runs pods with exactly one container and no init containers"
                )
            assert container is not None
            if not container.get("command"):
                raise UnsupportedPod(
                    f"container {container['name']!r} has no command: the local node runs no images, "
                    "so it cannot know the image's entrypoint"
                )
            if spec.get("restartPolicy", "Always") != "Never":
                raise UnsupportedPod(
                    "the local node runs pods with restartPolicy: Never only (as the trainer's Job)"
                )
            if container.get("workingDir"):
                raise UnsupportedPod("workingDir is not supported: the local node runs no images")
            argv, env, mounts = self._configure(container)
        except UnsupportedPod as e:
            log.warning("pod %s: %s", self.key, e)
            self.node.emit_event(self.pod, "Warning", "UnsupportedByLocalNode", str(e))
            self._patch_status(failed_status(self.pod, container, "UnsupportedByLocalNode", str(e)))
            if self._stop.is_set():
                self._finalize_deletion()
            return
        if argv is None or self._stop.is_set():  # deleted before it could start
            self._finalize_deletion()
            return
        self._run_container(container, argv, env, bool(mounts))

    def _configure(
        self, container: Mapping[str, Any]
    ) -> tuple[list[str] | None, dict[str, str], list[Mount]]:
        """Resolve env and volumes, waiting (CreateContainerConfigError) while a
        referenced Secret or ConfigMap is missing; (None, ...) if deleted meanwhile."""
        self._patch_status(waiting_status(self.pod, container, "ContainerCreating"))
        delay = 1.0
        while True:
            refs = References(self._core, self.pod["metadata"]["namespace"])
            try:
                defined = container_env(container, refs)
                mounts = prepare_mounts(self.pod, container, refs, self.folder / "volumes")
                break
            except ContainerConfigError as e:
                log.info("pod %s: waiting: %s", self.key, e)
                self._patch_status(
                    waiting_status(self.pod, container, "CreateContainerConfigError", str(e))
                )
                if self._stop.wait(delay):
                    return None, {}, []
                delay = min(delay * 2, 10.0)
        env = self._base_env()
        env.update(defined)
        argv = [
            _literal(part, "command")
            for part in [*container["command"], *(container.get("args") or [])]
        ]
        self._command = argv
        wrapped = wrap_with_mounts(
            argv, mounts, self.node.unshare, str(self.home), self.folder, self.node.keep_visible
        )
        for mount in mounts:
            self.node.make_mountpoint(Path(mount.target))
        return wrapped, env, mounts

    @property
    def home(self) -> Path:
        """The pod's HOME (unless its env sets one) and working folder."""
        return self.folder / "home"

    def _base_env(self) -> dict[str, str]:
        self.home.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": ":".join([*self.node.path_prepend, SYSTEM_PATH]),
            "HOME": str(self.home),
            "HOSTNAME": self.pod["metadata"]["name"],
            "LANG": "C.UTF-8",
            TERMINATION_LOG_ENV: str(self.folder / "termination-log"),
            POD_UID_ENV: self.uid,
            **self.node.extra_env,
        }

    def _run_container(
        self, container: Mapping[str, Any], argv: list[str], env: dict[str, str], mounted: bool
    ) -> None:
        """Run the process once (restartPolicy: Never) and report how it ended."""
        log_file = self.folder / f"{container['name']}.log"
        message_file = self.folder / "termination-log"
        started_at = now()
        with log_file.open("wb") as out:
            try:
                process = subprocess.Popen(
                    argv,
                    env=env,
                    # With mounts, the mount script changes into it.
                    cwd=None if mounted else self.home,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as e:
                out.write(f"local node: cannot start {argv[0]}: {e}\n".encode())
                process = None
        if process is None:
            end = Termination(128, started_at, now(), f"cannot start {argv[0]}", 0)
        else:
            self._process = process
            (self.folder / "pgid").write_text(str(process.pid))
            log.info("pod %s: started pid %d: %s", self.key, process.pid, " ".join(self._command))
            self.node.emit_event(
                self.pod,
                "Normal",
                "Started",
                f"Started container {container['name']} as pid {process.pid}",
            )
            self._patch_status(
                running_status(self.pod, container, started_at=started_at, pid=process.pid)
            )
            exit_code = self._wait(process)
            (self.folder / "pgid").unlink(missing_ok=True)
            end = Termination(
                exit_code,
                started_at,
                now(),
                termination_message(container, message_file, log_file, exit_code),
                process.pid,
            )
        log.info("pod %s: exited with %d", self.key, end.exit_code)
        self._patch_status(terminated_status(self.pod, container, end))
        if self._stop.is_set():
            self._finalize_deletion()

    def _wait(self, process: subprocess.Popen[bytes]) -> int:
        """Wait for the process; on a stop request SIGTERM its group, SIGKILL after the grace period."""
        kill_at: float | None = None
        while True:
            try:
                code = process.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if self._stop.is_set():
                if kill_at is None:
                    _signal(process.pid, signal.SIGTERM)
                    kill_at = time.monotonic() + self._grace
                    self.node.emit_event(self.pod, "Normal", "Killing", "Stopping container")
                elif time.monotonic() >= kill_at:
                    _signal(process.pid, signal.SIGKILL)
                    kill_at = float("inf")
        # A container's processes end with its main process (its PID namespace goes);
        # here they share a process group instead.
        _signal(process.pid, signal.SIGKILL)
        return 128 - code if code < 0 else code


def _signal(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def sweep_pod_processes(pods_dir: Path) -> int:
    """Kill pod processes a crashed local node left behind; returns how many groups."""
    killed = 0
    for pgid_file in pods_dir.glob("*/*/*/pgid"):
        uid = pgid_file.parent.name
        try:
            pgid = int(pgid_file.read_text())
            environ = Path(f"/proc/{pgid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            pgid_file.unlink(missing_ok=True)
            continue
        if f"{POD_UID_ENV}={uid}".encode() in environ:
            _signal(pgid, signal.SIGKILL)
            killed += 1
        pgid_file.unlink(missing_ok=True)
    return killed
