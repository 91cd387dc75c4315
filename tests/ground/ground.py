"""The whole test ground in one object: a cluster (the built-in control plane, or an
existing one from KUBETUNE_TEST_KUBECONFIG), kwok's fake GPU nodes, the local node and
SeaweedFS, each started on first use and all stopped by `stop()`.

The pytest fixtures (tests/ground/fixtures.py) and `make cluster`
(tests/ground/__main__.py) both build on it; only the latter lets the processes
outlive the command that started them.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from tests.ground.cluster import Cluster
from tests.ground.controlplane import ControlPlane
from tests.ground.kwok import KwokNodes, default_pool
from tests.ground.localnode import LocalNode
from tests.ground.process import GroundError, ManagedProcess
from tests.ground.s3 import SeaweedS3, SeaweedStartError
from tests.ground.tools import find_tools

log = logging.getLogger(__name__)

EXTERNAL_KUBECONFIG_ENV = "KUBETUNE_TEST_KUBECONFIG"
LOCAL_NODE_NAME = "local-node"


def external_kubeconfig() -> Path | None:
    """The existing cluster to test against, if KUBETUNE_TEST_KUBECONFIG names one."""
    value = os.environ.get(EXTERNAL_KUBECONFIG_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise GroundError("cluster", f"{EXTERNAL_KUBECONFIG_ENV}={value}: no such file", hint="")
    return path


class Ground:
    """Parts of the test ground, started lazily, stopped together (newest first)."""

    def __init__(self, folder: Path, *, external: Path | None = None, tie_to_parent: bool = True):
        self.folder = folder
        self.external = external
        self.tie_to_parent = tie_to_parent
        self.timings: dict[str, float] = {}
        # On a cluster others may use too, the nodes this ground adds get unique names.
        self.suffix = "" if external is None else f"-{uuid.uuid4().hex[:5]}"
        self._control_plane: ControlPlane | None = None
        self._cluster: Cluster | None = None
        self._kwok: KwokNodes | None = None
        self._local_node: LocalNode | None = None
        self._s3: SeaweedS3 | None = None

    @property
    def processes(self) -> list[ManagedProcess]:
        """Every process started so far, in start order."""
        found = list(self._control_plane.processes) if self._control_plane else []
        for part in (self._kwok, self._local_node):
            if part is not None and part.process is not None:
                found.append(part.process)
        if self._s3 is not None and self._s3.pid is not None:
            found.append(
                ManagedProcess.adopt(
                    "seaweedfs", self._s3.pid, [str(self._s3.weed)], self._s3.log_path
                )
            )
        return found

    def cluster(self) -> Cluster:
        if self._cluster is None:
            started = time.monotonic()
            if self.external is not None:
                tools = find_tools(need_control_plane=False)
                self._cluster = Cluster(self.external, tools, self.folder, external=True)
                try:
                    self._cluster.core.list_namespace(limit=1)
                except Exception as e:
                    raise GroundError(
                        "cluster", f"cannot reach the cluster of {self.external}: {e}", hint=""
                    ) from e
            else:
                tools = find_tools()
                self._control_plane = ControlPlane(
                    self.folder / "control-plane", tools, tie_to_parent=self.tie_to_parent
                )
                try:
                    self._control_plane.start()
                except BaseException:
                    self._control_plane.stop()
                    raise
                self._cluster = Cluster(
                    self._control_plane.kubeconfig, tools, self.folder, ca=self._control_plane.ca
                )
            self.timings["cluster"] = time.monotonic() - started
        return self._cluster

    def kwok(self) -> KwokNodes:
        if self._kwok is None:
            cluster = self.cluster()
            started = time.monotonic()
            kwok = self._kwok = KwokNodes(
                self.folder / "kwok",
                cluster.tools,
                pool=f"fake{self.suffix}",
                nodes=default_pool(self.suffix),
            )
            kwok.start(cluster.kubeconfig, tie_to_parent=self.tie_to_parent)
            kwok.create_nodes(cluster.core)
            kwok.wait_ready(cluster.core)
            self.timings["kwok"] = time.monotonic() - started
        return self._kwok

    def local_node(self) -> LocalNode:
        if self._local_node is None:
            cluster = self.cluster()
            started = time.monotonic()
            node = self._local_node = LocalNode(
                self.folder / "local-node", name=LOCAL_NODE_NAME + self.suffix
            )
            if self._control_plane is not None:
                # A kubelet's identity: the Node authorizer and NodeRestriction then
                # limit it to its own Node, its pods and the Secrets they reference.
                kubeconfig = self._control_plane.kubeconfig_for_user(
                    f"system:node:{node.name}",
                    ("system:nodes",),
                    self.folder / "local-node" / "kubeconfig",
                )
            else:
                kubeconfig = cluster.kubeconfig
            node.start(kubeconfig, tie_to_parent=self.tie_to_parent)
            node.wait_ready(cluster.core)
            self.timings["local-node"] = time.monotonic() - started
        return self._local_node

    def s3(self) -> SeaweedS3:
        """SeaweedFS as the S3 endpoint (tests use the `s3_server` fixture instead)."""
        if self._s3 is None:
            started = time.monotonic()
            try:
                self._s3 = SeaweedS3.start(self.folder / "s3", die_with_parent=self.tie_to_parent)
            except SeaweedStartError as e:
                raise GroundError("seaweedfs", str(e), hint="") from e
            self.timings["s3"] = time.monotonic() - started
        return self._s3

    def stop(self) -> None:
        """Stop everything started (safe to call twice). On an existing cluster, also
        delete the Node objects the ground added to it."""
        errors = []
        if self._s3 is not None:
            self._s3.stop()
            self._s3 = None
        core = CoreV1Api(self._cluster.api) if self._cluster is not None and self.external else None
        if self._local_node is not None:
            self._local_node.stop()
            if core is not None:
                _delete_node(core, self._local_node.name)
        if self._kwok is not None:
            self._kwok.stop()
            if core is not None:
                for name in self._kwok.names:
                    _delete_node(core, name)
        if self._control_plane is not None:
            try:
                self._control_plane.stop()
            except Exception as e:
                errors.append(e)
        self._local_node = self._kwok = None
        self._control_plane = self._cluster = None
        if errors:
            raise errors[0]


def _delete_node(core: CoreV1Api, name: str) -> None:
    try:
        core.delete_node(name)
    except ApiException as e:
        if e.status != 404:
            log.warning("could not delete node %s: %s", name, e)
