"""One pod on the local node: its environment, its volumes, its process, its status.

Test support only (see tests/ground/localnode.py for what the local node is and is
not). Pods are handled as the raw JSON the API serves, so that what runs is exactly
the pod spec the operator created, field names and all.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import logging
import math
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
from kubernetes.utils import parse_quantity

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
RESTART_BACKOFF_MAX = 30.0

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
API_TIMEOUT = 10  # seconds for each API request: a hung request must not hang a pod's worker


class ContainerConfigError(Exception):
    """A reference the container needs is missing (the kubelet's
    CreateContainerConfigError): the pod waits and is retried, as on a real node."""


class UnsupportedPod(Exception):
    """Something this stand-in cannot do (an image entrypoint, a hostPath volume...):
    the pod fails at once with this message rather than running differently."""


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------
# Environment


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, `$$` is a literal `$`,
    undefined references stay as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


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

    def value(self, kind: str, ref: Mapping[str, Any]) -> str | None:
        """One key (secretKeyRef/configMapKeyRef); None when optional and missing."""
        name, key, optional = ref.get("name", ""), ref["key"], bool(ref.get("optional"))
        data = self.data(kind, name)
        if data is None:
            if optional:
                return None
            raise ContainerConfigError(f'{kind.lower()} "{name}" not found')
        if key not in data:
            if optional:
                return None
            raise ContainerConfigError(f"couldn't find key {key} in {kind} {self.namespace}/{name}")
        return data[key].decode(errors="surrogateescape")


def field_value(pod: Pod, path: str) -> str:
    """A downward-API fieldRef, for the fields the kubelet supports."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.hostIP": status.get("hostIP") or NODE_IP,
        "status.hostIPs": status.get("hostIP") or NODE_IP,
        "status.podIP": status.get("podIP") or NODE_IP,
        "status.podIPs": status.get("podIP") or NODE_IP,
    }
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)(?:\['([^']+)'\])?", path)
    if match:
        values = meta.get(match.group(1)) or {}
        if match.group(2) is not None:
            return values.get(match.group(2), "")
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise UnsupportedPod(f"fieldRef {path!r} is not supported")


def resource_value(
    container: Mapping[str, Any], ref: Mapping[str, Any], allocatable: Mapping[str, str]
) -> str:
    """A resourceFieldRef: the container's limit (else the node's allocatable) or
    request, divided by the divisor and rounded up, as the kubelet does."""
    kind, _, resource = ref["resource"].partition(".")
    resources = (container.get("resources") or {}).get(kind) or {}
    quantity = resources.get(resource)
    if quantity is None:
        if kind == "requests":
            return "0"
        quantity = allocatable.get(resource)
        if quantity is None:
            raise UnsupportedPod(f"resourceFieldRef {ref['resource']!r} is not supported")
    divisor = parse_quantity(str(ref.get("divisor") or "1"))
    return str(math.ceil(parse_quantity(str(quantity)) / divisor))


def container_env(
    pod: Pod,
    container: Mapping[str, Any],
    refs: References,
    allocatable: Mapping[str, str],
) -> dict[str, str]:
    """The variables a container defines (envFrom, then env, with $(VAR) expansion)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        kind, ref = (
            ("Secret", source.get("secretRef"))
            if source.get("secretRef")
            else ("ConfigMap", source.get("configMapRef"))
        )
        if ref is None:
            continue
        data = refs.data(kind, ref.get("name", ""))
        if data is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{kind.lower()} "{ref.get("name", "")}" not found')
        for key, value in data.items():
            env[prefix + key] = value.decode(errors="surrogateescape")
    for var in container.get("env") or []:
        name, source = var["name"], var.get("valueFrom")
        if source is None:
            env[name] = expand(var.get("value", ""), env)
            continue
        if "secretKeyRef" in source:
            value = refs.value("Secret", source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = refs.value("ConfigMap", source["configMapKeyRef"])
        elif "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            value = resource_value(container, source["resourceFieldRef"], allocatable)
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
    """Materialise the volumes the container mounts under `volumes_dir`.

    emptyDir: a fresh folder (medium: Memory is not a tmpfs here). secret, configMap:
    their keys written as files. The service-account token volume that admission
    adds (projected, kube-api-access-*) is not mounted: nothing started here talks to
    the API from inside. Anything else fails the pod with UnsupportedPod.
    """
    by_name = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mounts = []
    for mount in container.get("volumeMounts") or []:
        volume = by_name.get(mount["name"])
        if volume is None:
            raise UnsupportedPod(f"volumeMount {mount['name']!r} has no volume")
        folder = volumes_dir / volume["name"]
        if "emptyDir" in volume:
            folder.mkdir(parents=True, exist_ok=True)
        elif "secret" in volume or "configMap" in volume:
            kind = "Secret" if "secret" in volume else "ConfigMap"
            source = volume.get("secret") or volume.get("configMap") or {}
            name = source.get("secretName") if kind == "Secret" else source.get("name")
            _write_keys(folder, kind, name or "", source, refs)
        elif "projected" in volume and volume["name"].startswith("kube-api-access-"):
            log.info(
                "pod %s: not mounting the service-account token volume %s",
                pod["metadata"]["name"],
                volume["name"],
            )
            continue
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise UnsupportedPod(
                f"volume {volume['name']!r}: {kinds} volumes are not supported by the local node"
            )
        source_path = folder / mount["subPath"] if mount.get("subPath") else folder
        if mount.get("subPath") and "emptyDir" in volume:
            source_path.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(source_path, mount["mountPath"], bool(mount.get("readOnly"))))
    return mounts


def _write_keys(
    folder: Path, kind: str, name: str, source: Mapping[str, Any], refs: References
) -> None:
    data = refs.data(kind, name)
    if data is None:
        if source.get("optional"):
            data = {}
        else:
            raise ContainerConfigError(f'{kind.lower()} "{name}" not found')
    items = source.get("items")
    files = {i["path"]: i["key"] for i in items} if items else {k: k for k in data}
    folder.mkdir(parents=True, exist_ok=True)
    for path, key in files.items():
        if key not in data:
            if source.get("optional"):
                continue
            raise ContainerConfigError(f"couldn't find key {key} in {kind} {refs.namespace}/{name}")
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[key])


# Runs inside a private mount namespace (unshare --mount). It first changes into the
# pod's folder: from there on every path it needs is relative to that folder or was
# resolved before anything is mounted, because a volume mounted over an ancestor (an
# emptyDir at /tmp, say, with the pod folders under /tmp) hides what lies beneath.
# Then it runs the operations mount_operations() planned, changes to the working
# folder (made if missing, as runtimes do) and execs the container's command. The
# volumes' targets are made beforehand on this machine (NodeContext.make_mountpoint:
# the mounts are private, the folders are not), or by the script inside a volume.
# --no-canonicalize: mount(8) would otherwise resolve a relative source through its
# absolute path, which may be hidden by then; the kernel resolves it from here.
_MOUNT_SCRIPT = r"""
set -e
cd "$1"
workdir="$2"; shift 2
while [ "$1" != "--" ]; do
  case "$1" in
    mkdir) mkdir -p "$2"; shift 2 ;;
    touch) [ -e "$2" ] || { mkdir -p "$(dirname "$2")"; : > "$2"; }; shift 2 ;;
    bind) mount --no-canonicalize --bind "$2" "$3"; shift 3 ;;
    readonly) mount --no-canonicalize -o remount,bind,ro "$2"; shift 2 ;;
    *) echo "local-node-mounts: unknown operation $1" >&2; exit 1 ;;
  esac
done
shift
[ -d "$workdir" ] || mkdir -p "$workdir"
cd "$workdir"
exec "$@"
"""

KEEP_DIR = ".keep"  # in the pod folder: handles on the folders a volume will cover


def _beneath(path: str, ancestor: str) -> bool:
    """Whether `ancestor` is a proper ancestor of `path` (both absolute)."""
    path, ancestor = os.path.realpath(path), os.path.realpath(ancestor)
    return path != ancestor and os.path.commonpath([path, ancestor]) == ancestor


def mount_operations(
    mounts: list[Mount], pod_folder: Path, keep_visible: Sequence[str]
) -> list[str]:
    """The mount script's operations, run from inside `pod_folder`.

    The volumes are bind-mounted from sources relative to the pod folder. A volume
    mounted over an ancestor of the pod folder, or of a folder in `keep_visible`
    (this machine's Python and checkout: the local node runs no images), would hide
    it: the pod's HOME and termination-message file, or the program it runs. Those
    folders are bind-mounted back at their own path inside the volume (the empty
    folders leading to them appear there; a real container would not have them).
    """
    operations: list[str] = []
    # (target, source, made as): the volumes, and the folders they would hide, bound back.
    binds = [
        (m.target, os.path.relpath(m.source, pod_folder), "mkdir" if m.source.is_dir() else "touch")
        for m in mounts
    ]
    hidden = [k for k in keep_visible if any(_beneath(k, m.target) for m in mounts)]
    for i, folder in enumerate(hidden):  # a handle on each, taken while it is in sight
        operations += ["mkdir", f"{KEEP_DIR}/{i}", "bind", folder, f"{KEEP_DIR}/{i}"]
        binds.append((folder, f"{KEEP_DIR}/{i}", "mkdir"))
    if any(_beneath(str(pod_folder), m.target) for m in mounts):
        binds.append((str(pod_folder), ".", "mkdir"))  # "." is the script's working folder
    # Outer targets first, as container runtimes do: a target inside an earlier mount is
    # made there (the one made beforehand on this machine is hidden by then).
    for target, source, make in sorted(binds, key=lambda b: len(Path(b[0]).parts)):
        operations += [make, target, "bind", source, target]
    for mount in mounts:  # last: the folders above may be made inside a read-only volume
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
        str(pod_folder),
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


def _conditions(ready: bool, reason: str | None, initialized: bool = True) -> list[dict[str, Any]]:
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
        condition("Initialized", initialized),
        condition("ContainersReady", ready),
        condition("Ready", ready),
    ]


def _container_status(
    container: Mapping[str, Any],
    state: dict[str, Any],
    *,
    ready: bool,
    restarts: int,
    last_state: dict[str, Any] | None = None,
    container_id: str | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": ready,
        "started": "running" in state,
        "restartCount": restarts,
        "state": state,
        "lastState": last_state or {},
    }
    if container_id:
        status["containerID"] = container_id
    return status


def waiting_status(
    pod: Pod, container: Mapping[str, Any], reason: str, message: str = ""
) -> dict[str, Any]:
    state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
    return {
        "phase": "Pending",
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "startTime": (pod.get("status") or {}).get("startTime") or now(),
        "conditions": _conditions(False, "ContainersNotReady"),
        "containerStatuses": [_container_status(container, state, ready=False, restarts=0)],
    }


def running_status(
    pod: Pod,
    container: Mapping[str, Any],
    *,
    started_at: str,
    pid: int,
    restarts: int,
    last_state: dict[str, Any] | None,
) -> dict[str, Any]:
    state = {"running": {"startedAt": started_at}}
    return {
        "phase": "Running",
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": NODE_IP,
        "podIPs": [{"ip": NODE_IP}],
        "startTime": (pod.get("status") or {}).get("startTime") or started_at,
        "conditions": _conditions(True, None),
        "containerStatuses": [
            _container_status(
                container,
                state,
                ready=True,
                restarts=restarts,
                last_state=last_state,
                container_id=f"local://{pid}",
            )
        ],
    }


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


def terminated_status(
    pod: Pod, container: Mapping[str, Any], end: Termination, *, restarts: int
) -> dict[str, Any]:
    succeeded = end.exit_code == 0
    reason = "PodCompleted" if succeeded else "PodFailed"
    return {
        "phase": "Succeeded" if succeeded else "Failed",
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": NODE_IP,
        "podIPs": [{"ip": NODE_IP}],
        "startTime": (pod.get("status") or {}).get("startTime") or end.started_at,
        "conditions": _conditions(False, reason),
        "containerStatuses": [
            _container_status(
                container,
                end.state,
                ready=False,
                restarts=restarts,
                container_id=f"local://{end.pid}",
            )
        ],
    }


def failed_status(
    pod: Pod, container: Mapping[str, Any] | None, reason: str, message: str
) -> dict[str, Any]:
    """A pod the local node cannot run at all."""
    status: dict[str, Any] = {
        "phase": "Failed",
        "reason": reason,
        "message": message,
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "startTime": (pod.get("status") or {}).get("startTime") or now(),
        "conditions": _conditions(False, "PodFailed"),
    }
    if container is not None:
        state = {
            "terminated": {
                "exitCode": 128,
                "reason": reason,
                "message": message,
                "startedAt": now(),
                "finishedAt": now(),
            }
        }
        status["containerStatuses"] = [_container_status(container, state, ready=False, restarts=0)]
    return status


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
    allocatable: Mapping[str, str]
    path_prepend: list[str]
    extra_env: Mapping[str, str]
    unshare: list[str] | None
    emit_event: Callable[[Pod, str, str, str], None]
    # Folders a pod's process needs from this machine (its Python, this checkout): kept
    # in sight when a volume is mounted over one of their ancestors.
    keep_visible: list[str] = field(default_factory=list)
    # Set when the node stops: pods are killed without telling the API (it may be
    # going away too, and a request to it must not hold up the kill).
    shutting_down: threading.Event = field(default_factory=threading.Event)
    # Mount points created on this machine's filesystem, removed when the node stops.
    created_mountpoints: list[Path] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def make_mountpoint(self, target: Path, *, directory: bool = True) -> None:
        """Create a mount's target (or a working folder) if missing, remembering what
        was created so that `remove_mountpoints` can tidy up."""
        folder = target if directory else target.parent
        with self._lock:
            missing = [p for p in [folder, *folder.parents] if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            self.created_mountpoints.extend(reversed(missing))
            if not directory and not target.exists():
                target.touch()
                self.created_mountpoints.append(target)

    def remove_mountpoints(self) -> None:
        with self._lock:
            for path in reversed(self.created_mountpoints):
                try:
                    path.rmdir() if path.is_dir() else path.unlink()
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
        self._run_container(container, argv, env, mounts)

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
                defined = container_env(self.pod, container, refs, self.node.allocatable)
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
            expand(part, env) for part in [*container["command"], *(container.get("args") or [])]
        ]
        self._command = argv
        wrapped = wrap_with_mounts(
            argv,
            mounts,
            self.node.unshare,
            self._workdir(container),
            self.folder,
            self.node.keep_visible,
        )
        for mount in mounts:
            self.node.make_mountpoint(Path(mount.target), directory=mount.source.is_dir())
        self.node.make_mountpoint(Path(self._workdir(container)))
        return wrapped, env, mounts

    def _workdir(self, container: Mapping[str, Any]) -> str:
        return container.get("workingDir") or str(self.folder / "home")

    def _base_env(self) -> dict[str, str]:
        home = self.folder / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": ":".join([*self.node.path_prepend, SYSTEM_PATH]),
            "HOME": str(home),
            "HOSTNAME": self.pod["metadata"]["name"],
            "LANG": "C.UTF-8",
            TERMINATION_LOG_ENV: str(self.folder / "termination-log"),
            POD_UID_ENV: self.uid,
            **self.node.extra_env,
        }

    def _run_container(
        self,
        container: Mapping[str, Any],
        argv: list[str],
        env: dict[str, str],
        mounts: list[Mount],
    ) -> None:
        restart_policy = self.pod["spec"].get("restartPolicy", "Always")
        log_file = self.folder / f"{container['name']}.log"
        message_file = self.folder / "termination-log"
        restarts, last_state, backoff = 0, None, 1.0
        cwd = self._workdir(container)  # with mounts, the mount script changes into it
        while True:
            message_file.unlink(missing_ok=True)
            if log_file.exists():
                log_file.replace(log_file.with_suffix(".previous.log"))
            started_at = now()
            with log_file.open("wb") as out:
                try:
                    process = subprocess.Popen(
                        argv,
                        env=env,
                        cwd=cwd if not mounts else None,
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
                log.info(
                    "pod %s: started pid %d: %s", self.key, process.pid, " ".join(self._command)
                )
                self.node.emit_event(
                    self.pod,
                    "Normal",
                    "Started",
                    f"Started container {container['name']} as pid {process.pid}",
                )
                self._patch_status(
                    running_status(
                        self.pod,
                        container,
                        started_at=started_at,
                        pid=process.pid,
                        restarts=restarts,
                        last_state=last_state,
                    )
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
            restart = not self._stop.is_set() and (
                restart_policy == "Always" or (restart_policy == "OnFailure" and end.exit_code != 0)
            )
            if not restart:
                self._patch_status(terminated_status(self.pod, container, end, restarts=restarts))
                break
            restarts, last_state = restarts + 1, end.state
            if self._stop.wait(backoff):
                self._patch_status(terminated_status(self.pod, container, end, restarts=restarts))
                break
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
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
