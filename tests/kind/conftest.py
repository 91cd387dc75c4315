"""The kind tier's cluster: `make kind-up` itself, built offline, shared by the tier's tests.

One session fixture runs hack/kind-up.sh with OFFLINE=1 and JOB=0, once the `docker`
fixture (tests/support/images.py) has made sure an engine runs (one it started is stopped
at the end; KIND=0 skips the tier, saying so): the node image built here, a kind
cluster from kind-config.yaml, the operator and trainer images built from their
Dockerfiles and loaded, SeaweedFS, the chart. The tests then drive TuningJobs through that
operator into real pods. At the end the cluster is deleted.

KUBETUNE_KIND_KEEP=1 keeps the cluster for a look afterwards (`kind delete cluster --name
kubetune-test` removes it).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = "kubetune-test"
# The cold path builds the control plane's Go binaries, the node image and the trainer
# image before the first test; pytest-timeout counts fixture setup in that test's time.
SETUP_TIMEOUT = 3000


def _tools() -> dict[str, str]:
    out = subprocess.run(
        [str(ROOT / "hack" / "build-tools.sh"), "--kind"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"hack/build-tools.sh --kind failed:\n{out.stderr[-3000:]}")
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


@dataclass
class KindCluster:
    name: str
    kubeconfig: Path
    kubectl_path: str
    kind_path: str

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            input=input,
            check=False,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, namespace: str, *documents: dict[str, Any]) -> None:
        self.kubectl(
            "apply", "-n", namespace, "-f", "-", input="\n---\n".join(map(json.dumps, documents))
        )

    def tuningjob_status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get("tuningjob", name, "-n", namespace).get("status") or {}

    def wait_status(
        self,
        namespace: str,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout: float,
        what: str,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.tuningjob_status(namespace, name)
            if predicate(status):
                return status
            time.sleep(2)
        pods = self.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False)
        raise AssertionError(f"no {what} within {timeout:.0f} s; last status: {status}\n{pods}")

    def namespace(self, prefix: str) -> str:
        """A namespace enforcing the restricted Pod Security Standard, with the S3 Secret."""
        ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
        secret = self.get("secret", "s3-credentials", "-n", "storage")
        self.apply(
            ns,
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": ns,
                    "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
                },
            },
        )
        self.apply(
            ns,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s3-credentials", "namespace": ns},
                "type": "Opaque",
                "data": secret["data"],
            },
        )
        return ns


@pytest.fixture(scope="session")
def kind_cluster(docker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindCluster]:
    tools = _tools()
    env = {
        **os.environ,
        "CLUSTER": CLUSTER,
        "OFFLINE": "1",
        "JOB": "0",
        # The tier's own port, apart from a walkthrough someone runs by hand.
        "S3_PORT": "18334",
        "DOCKER": docker,
        "PATH": os.pathsep.join(
            [str(Path(tools[t]).parent) for t in ("kind", "kubectl", "helm")]
            + [os.environ.get("PATH", "")]
        ),
    }
    log = tmp_path_factory.mktemp("kind") / "kind-up.log"
    kubeconfig = log.parent / "kubeconfig"
    cluster = KindCluster(CLUSTER, kubeconfig, tools["kubectl"], tools["kind"])
    try:
        with log.open("w") as out:
            result = subprocess.run(
                [str(ROOT / "hack" / "kind-up.sh")],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"hack/kind-up.sh failed:\n{log.read_text()[-6000:]}")
        kubeconfig.write_text(
            subprocess.run(
                [tools["kind"], "get", "kubeconfig", "--name", CLUSTER],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        yield cluster
    finally:
        if os.environ.get("KUBETUNE_KIND_KEEP") != "1":
            subprocess.run(
                [tools["kind"], "delete", "cluster", "--name", CLUSTER],
                env=env,
                capture_output=True,
                check=False,
            )


@pytest.fixture(scope="session")
def kind_up_env(kind_cluster: KindCluster) -> dict[str, str]:
    """The environment that reruns hack/kind-up.sh against the tier's cluster."""
    tools = _tools()
    return {
        **os.environ,
        "CLUSTER": kind_cluster.name,
        "OFFLINE": "1",
        "SKIP_BUILD": "1",
        "S3_PORT": "18334",
        "PATH": os.pathsep.join(
            [str(Path(tools[t]).parent) for t in ("kind", "kubectl", "helm")]
            + [os.environ.get("PATH", "")]
        ),
    }
