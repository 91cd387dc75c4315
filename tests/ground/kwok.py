"""Fake GPU nodes: kwok (sigs.k8s.io/kwok) plays their kubelets.

kwok manages only the nodes annotated `kwok.x-k8s.io/node=<pool>` (`fake` by
default), never the local node or a real cluster's nodes. Its stages (copied from kwok's release by build-tools.sh)
make a node Ready and keep its Lease, make a pod bound to it Running and Ready, and
delete a pod once it is being deleted. Pods on kwok nodes never complete by
themselves: a test decides their outcome by patching their status (e.g. `Failed`
with exit code 78), deterministically.

The default pool is what a GPU operator's node would look like: GPU feature
discovery labels, `nvidia.com/gpu` capacity and the `nvidia.com/gpu=present:NoSchedule`
taint, plus one untainted CPU node for everything that needs no GPU.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client import CoreV1Api, V1Node
from kubernetes.client.exceptions import ApiException

from tests.ground.process import ManagedProcess, free_port, wait_until
from tests.ground.tools import Tools

MANAGED_ANNOTATION = "kwok.x-k8s.io/node"
# Which ground's pool a fake node belongs to (two grounds may share a cluster).
POOL_LABEL = "kubetune.dev/kwok-pool"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}


@dataclass(frozen=True)
class FakeNode:
    name: str
    cpu: str = "32"
    memory: str = "256Gi"
    gpus: int = 0
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    gpu_memory_mib: int = 81559
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def tolerations(self) -> list[dict[str, str]]:
        """What a pod needs to tolerate to land here."""
        return (
            [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
            if self.gpus
            else []
        )

    def manifest(self) -> dict[str, Any]:
        labels = {
            "type": "kwok",
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.labels,
        }
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": "110",
            "ephemeral-storage": "1Ti",
        }
        taints = []
        if self.gpus:
            labels.update(
                {
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": self.gpu_product,
                    "nvidia.com/gpu.count": str(self.gpus),
                    "nvidia.com/gpu.memory": str(self.gpu_memory_mib),
                }
            )
            capacity[GPU_RESOURCE] = str(self.gpus)
            taints.append(GPU_TAINT)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {MANAGED_ANNOTATION: "fake"},
            },
            "spec": {"taints": taints},
            "status": {"capacity": capacity, "allocatable": capacity},
        }


def default_pool(suffix: str = "") -> tuple[FakeNode, ...]:
    """Two 8-GPU nodes and one CPU node; `suffix` keeps names unique on a shared cluster."""
    return (
        FakeNode(f"kwok-gpu-0{suffix}", gpus=8),
        FakeNode(f"kwok-gpu-1{suffix}", gpus=8),
        FakeNode(f"kwok-cpu-0{suffix}", cpu="16", memory="64Gi"),
    )


def node_schedulable(node: V1Node) -> bool:
    """Ready, and the node lifecycle controller has lifted its not-ready taint (it
    taints every new node until it sees it Ready, within ~5 s)."""
    ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    tainted = any(t.key.startswith("node.kubernetes.io/") for t in node.spec.taints or [])
    return ready and not tainted


class KwokNodes:
    """The kwok controller and the fake nodes it manages.

    `pool` names this set of nodes: kwok manages the nodes annotated
    `kwok.x-k8s.io/node=<pool>` and they carry the label `kubetune.dev/kwok-pool=<pool>`,
    so a second ground on the same cluster (e.g. tests against a `make cluster`
    ground) neither manages nor schedules onto the first one's nodes.
    """

    def __init__(
        self,
        folder: Path,
        tools: Tools,
        *,
        pool: str = "fake",
        nodes: tuple[FakeNode, ...] | None = None,
    ):
        self.folder = folder
        self.tools = tools
        self.pool = pool
        self.nodes = nodes if nodes is not None else default_pool()
        self.process: ManagedProcess | None = None

    @property
    def node_selector(self) -> dict[str, str]:
        """Pins a pod to this pool (add `FakeNode.tolerations` for the GPU nodes)."""
        return {POOL_LABEL: self.pool}

    @property
    def gpu_nodes(self) -> list[FakeNode]:
        return [n for n in self.nodes if n.gpus]

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def start(self, kubeconfig: Path, *, tie_to_parent: bool = True) -> ManagedProcess:
        port = free_port()
        self.health_url = f"http://127.0.0.1:{port}/healthz"
        self.process = ManagedProcess(
            "kwok",
            [
                str(self.tools["kwok"]),
                f"--kubeconfig={kubeconfig}",
                f"--config={self.tools['kwok-stages']}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={MANAGED_ANNOTATION}={self.pool}",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{port}",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.240.0.1",
            ],
            self.folder / "kwok.log",
        ).start(tie_to_parent=tie_to_parent)
        return self.process

    def create_nodes(self, core: CoreV1Api) -> None:
        for node in self.nodes:
            manifest = node.manifest()
            manifest["metadata"]["annotations"][MANAGED_ANNOTATION] = self.pool
            manifest["metadata"]["labels"][POOL_LABEL] = self.pool
            try:
                core.create_node(manifest)
            except ApiException as e:
                if e.status != 409:
                    raise

    def wait_ready(self, core: CoreV1Api, timeout: float = 60.0) -> None:
        processes = [self.process] if self.process else []

        def healthy() -> bool:
            with urllib.request.urlopen(self.health_url, timeout=2) as r:
                return r.status == 200

        wait_until(healthy, timeout=timeout, what="healthy", part="kwok", processes=processes)

        def all_ready() -> bool:
            return all(node_schedulable(core.read_node(name)) for name in self.names)

        wait_until(
            all_ready, timeout=timeout, what="Ready (its nodes)", part="kwok", processes=processes
        )

    def delete_nodes(self, core: CoreV1Api) -> None:
        for name in self.names:
            try:
                core.delete_node(name)
            except ApiException as e:
                if e.status != 404:
                    raise

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
