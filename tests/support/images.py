"""kubetune's images, built and run as a cluster would run them (test support).

Fixtures (loaded by tests/conftest.py):

- `docker` (session): the Docker client, once hack/docker-engine.sh has made sure an
  engine runs (installing and starting one where it may). An engine it started is stopped
  at the end of the session; one that was already running is left alone. No engine: the
  test fails with the script's reason, unless KIND=0 opts out of everything that needs
  Docker (then it is skipped, saying so).
- `operator_image`, `trainer_image` (session): kubetune-operator:dev and
  kubetune-trainer:dev, built with hack/images/build.sh (the bases made locally). Docker's
  layer cache makes this seconds when nothing changed, and a code change rebuilds the last
  layers only; a first (cold) build of the trainer takes minutes.

`pod_to_docker_run` turns a pod spec, as the operator's builders render it, into a
`docker run`: the user and groups, the read-only root filesystem, dropped capabilities,
no privilege escalation, the environment (Secret references resolved from the given
values, passed through the client's environment, never as arguments), the emptyDir and
memory-backed /dev/shm volumes, the resource limits and the termination-message file. A
field it cannot carry over raises UnsupportedPodField rather than being dropped.
"""

from __future__ import annotations

import math
import os
import secrets
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes.utils import parse_quantity

from tests.ground.cluster import Cluster
from tests.ground.process import ManagedProcess
from tests.integration.operator_support import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
OPT_OUT = "KIND"  # KIND=0: no test that needs a Docker engine runs (shared with the kind tier)


def _opted_out() -> bool:
    return os.environ.get(OPT_OUT, "").strip() in {"0", "false", "no"}


def _engine_answers(client: str) -> bool:
    return subprocess.run([client, "info"], capture_output=True, check=False).returncode == 0


def _default_client() -> str:
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


@pytest.fixture(scope="session")
def docker() -> Iterator[str]:
    if _opted_out():
        pytest.skip(f"{OPT_OUT}=0: the tests that need a Docker engine are opted out")
    was_running = _engine_answers(_default_client())
    result = subprocess.run(
        [str(ROOT / "hack/docker-engine.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"no Docker engine (hack/docker-engine.sh exited {result.returncode}):\n"
            f"{result.stderr.strip()}\nThese tests build and run kubetune's images. "
            f"Opt out with {OPT_OUT}=0 (never in CI).",
            pytrace=False,
        )
    client = result.stdout.strip().removeprefix("DOCKER=")
    try:
        yield client
    finally:
        if not was_running:
            subprocess.run([str(ROOT / "hack/docker-engine.sh"), "--stop"], check=False)


def build_image(docker: str, image: str) -> str:
    """Build kubetune-<image>:dev with hack/images/build.sh; fail with its words if it cannot."""
    result = subprocess.run(
        [str(ROOT / "hack/images/build.sh"), image],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DOCKER": docker, "TAG": "dev"},
    )
    if result.returncode != 0:
        pytest.fail(f"building the {image} image failed:\n{result.stderr[-6000:]}", pytrace=False)
    return f"kubetune-{image}:dev"


@pytest.fixture(scope="session")
def operator_image(docker: str) -> str:
    return build_image(docker, "operator")


@pytest.fixture(scope="session")
def trainer_image(docker: str) -> str:
    return build_image(docker, "trainer")


def run_in_image(
    docker: str, image: str, *args: str, entrypoint: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`docker run --rm` as the image's own user, with a read-only root filesystem and a
    writable /tmp (torch's imports want a temporary directory; the pod has its scratch)."""
    argv = [docker, "run", "--rm", "--read-only", "--network", "none", "--tmpfs", "/tmp"]
    if entrypoint is not None:
        argv += ["--entrypoint", entrypoint]
    return subprocess.run(
        [*argv, image, *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def remove_container(docker: str, name: str) -> None:
    subprocess.run([docker, "rm", "--force", name], capture_output=True, check=False)


# --- The operator, from its image -------------------------------------------------------


class OperatorContainer(OperatorProcess):
    """`kubetune operator` from the operator image, configured exactly as OperatorProcess
    configures the process (KUBETUNE_OPERATOR_* variables), as the chart runs it: user
    1000, read-only root filesystem, no capabilities. Host networking, so that it reaches
    the ground's API server on 127.0.0.1 and the test reaches its health port."""

    def __init__(
        self,
        cluster: Cluster,
        folder: Path,
        namespaces: list[str],
        *,
        docker: str,
        image: str,
        lease_namespace: str,
        name: str = "operator",
        **settings: Any,
    ):
        super().__init__(
            cluster, folder, namespaces, lease_namespace=lease_namespace, name=name, **settings
        )
        self.docker = docker
        self.container = f"kubetune-test-{name}-{secrets.token_hex(4)}"
        env = dict(self.process.env or {})
        # The client's copy is root's, mode 0600; the container's user is 1000.
        kubeconfig = folder / f"{name}-kubeconfig"
        kubeconfig.write_bytes(Path(env["KUBECONFIG"]).read_bytes())
        kubeconfig.chmod(0o644)
        argv = [
            docker, "run", "--rm", "--name", self.container, "--network", "host",
            "--user", "1000:1000", "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--tmpfs", "/tmp",  # the chart's emptyDir at /tmp
            "--volume", f"{kubeconfig}:/etc/kubetune/kubeconfig:ro",
            "--env", "KUBECONFIG=/etc/kubetune/kubeconfig",
        ]  # fmt: skip
        for key in sorted(env):
            if key.startswith("KUBETUNE_OPERATOR_") or key == "POD_NAME":
                argv += ["--env", key]  # the value from the client's environment
        argv += [image, "-v", "operator"]
        self.process = ManagedProcess(name, argv, folder / f"{name}.log", env=env, cwd=ROOT)

    def stop(self, grace: float = 20.0) -> None:
        # `docker run` passes SIGTERM on to the container; the container is removed after.
        super().stop(grace=grace)
        remove_container(self.docker, self.container)

    def kill(self) -> None:
        remove_container(self.docker, self.container)
        super().kill()


# --- A pod spec as a `docker run` ---------------------------------------------------------


class UnsupportedPodField(Exception):
    """A field of the pod spec that a plain `docker run` cannot reproduce."""


# Pod fields that place or schedule a pod and have nothing to carry over to one container.
_SCHEDULING_ONLY = {
    "nodeSelector", "tolerations", "affinity", "priorityClassName", "restartPolicy",
    "serviceAccountName", "imagePullSecrets", "schedulerName",
}  # fmt: skip


@dataclass
class DockerRun:
    argv: list[str]
    env: dict[str, str]  # the client's environment: where `--env NAME` takes its value
    termination_log: Path
    volumes: dict[str, Path] = field(default_factory=dict)  # emptyDir name → host folder


def pod_to_docker_run(
    docker: str,
    pod: Mapping[str, Any],
    *,
    image: str,
    name: str,
    folder: Path,
    secret_values: Mapping[str, Mapping[str, str]],
    network: str = "host",
    extra_env: Mapping[str, str] | None = None,
) -> DockerRun:
    """The `docker run` for the pod's single container, as a kubelet would start it."""
    spec = dict(pod)
    (container,) = spec.pop("containers")
    pod_security = spec.pop("securityContext", {})
    volumes = {v["name"]: v for v in spec.pop("volumes", [])}
    grace = spec.pop("terminationGracePeriodSeconds", 30)
    if spec.pop("automountServiceAccountToken", True) is not False:
        raise UnsupportedPodField("a service-account token mount")
    spec.pop("enableServiceLinks", None)
    unknown = set(spec) - _SCHEDULING_ONLY
    if unknown:
        raise UnsupportedPodField(f"pod fields {sorted(unknown)}")

    security = {**pod_security, **container.get("securityContext", {})}
    uid, gid = security["runAsUser"], security["runAsGroup"]
    if security.get("runAsNonRoot") and uid == 0:
        raise AssertionError("runAsNonRoot with runAsUser 0: the kubelet would refuse it")
    argv = [docker, "run", "--name", name, "--network", network, "--user", f"{uid}:{gid}"]
    if "fsGroup" in security:
        argv += ["--group-add", str(security["fsGroup"])]
    if security.get("readOnlyRootFilesystem"):
        argv.append("--read-only")
    if security.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    for capability in security.get("capabilities", {}).get("drop", []):
        argv += ["--cap-drop", capability]
    if security.get("capabilities", {}).get("add"):
        raise UnsupportedPodField("added capabilities")
    profile = security.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if profile != "RuntimeDefault":  # Docker's default profile is the runtime default
        raise UnsupportedPodField(f"seccompProfile {profile}")
    argv += ["--stop-timeout", str(grace)]

    limits = container.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        argv += ["--cpus", str(float(parse_quantity(limits["cpu"])))]
    if "memory" in limits:
        memory = int(parse_quantity(limits["memory"]))
        argv += ["--memory", str(memory), "--memory-swap", str(memory)]
    if set(limits) - {"cpu", "memory"}:
        raise UnsupportedPodField(f"limits {sorted(set(limits) - {'cpu', 'memory'})}")

    run = DockerRun(argv=argv, env={}, termination_log=folder / "termination-log")
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        target = mount["mountPath"]
        if "emptyDir" not in volume:
            raise UnsupportedPodField(f"volume {mount['name']}: only emptyDir")
        size = volume["emptyDir"].get("sizeLimit")
        if volume["emptyDir"].get("medium") == "Memory":
            size_bytes = int(parse_quantity(size)) if size else None
            if target == "/dev/shm":
                argv += ["--shm-size", str(size_bytes or 64 * 2**20)]
            else:
                option = f",tmpfs-size={size_bytes}" if size_bytes else ""
                argv += ["--mount", f"type=tmpfs,destination={target}{option}"]
        else:
            # A kubelet makes an emptyDir world-writable (0777); its sizeLimit is enforced
            # by eviction, which no single container run reproduces.
            host = folder / "volumes" / mount["name"]
            host.mkdir(parents=True)
            host.chmod(0o777)
            run.volumes[mount["name"]] = host
            argv += ["--volume", f"{host}:{target}"]

    # The kubelet bind-mounts a fresh, writable file at terminationMessagePath.
    run.termination_log.write_text("")
    run.termination_log.chmod(0o666)
    argv += ["--volume", f"{run.termination_log}:{container['terminationMessagePath']}"]

    for variable in container.get("env", []):
        key = variable["name"]
        if "value" in variable:
            if "$(" in variable["value"]:
                raise UnsupportedPodField(f"env {key}: $(VAR) references")
            value: str | None = variable["value"]
        elif "resourceFieldRef" in variable["valueFrom"]:
            # limits.cpu → its ceiling in whole CPUs (divisor 1), as the kubelet gives it.
            resource = variable["valueFrom"]["resourceFieldRef"]["resource"]
            kind, _, what = resource.partition(".")
            quantity = container.get("resources", {}).get(kind, {}).get(what)
            if quantity is None or variable["valueFrom"]["resourceFieldRef"].get("divisor"):
                raise UnsupportedPodField(f"env {key}: {variable['valueFrom']}")
            value = str(math.ceil(parse_quantity(quantity)))
        else:
            ref = variable["valueFrom"].get("secretKeyRef")
            if ref is None:
                raise UnsupportedPodField(f"env {key}: {variable['valueFrom']}")
            value = secret_values.get(ref["name"], {}).get(ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                raise AssertionError(f"env {key}: Secret {ref['name']} has no key {ref['key']}")
        run.env[key] = value
        argv += ["--env", key]  # the value travels in the client's environment only

    for key, value in (extra_env or {}).items():
        if key in run.env:
            raise AssertionError(f"extra_env {key} would override the pod's own")
        run.env[key] = value
        argv += ["--env", key]

    command = container.get("command")
    if command:
        argv += ["--entrypoint", command[0]]
    if "workingDir" in container:
        argv += ["--workdir", container["workingDir"]]
    argv.append(image)
    argv += [*(command or [])[1:], *container.get("args", [])]
    return run
