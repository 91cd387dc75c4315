"""The operator refuses to start, in words, where it could only watch nothing.

kopf's cluster scanning is off (it needs cluster-wide CRD access the operator is not
given), so without these checks a missing CRD or missing RBAC would leave kopf
retrying its watches forever while nothing happens to any TuningJob.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.api.contract import ExitCode
from tests.ground.cluster import Cluster
from tests.ground.controlplane import ControlPlane
from tests.ground.process import GroundError, free_port
from tests.ground.tools import find_tools
from tests.integration.operator_support import ROOT, install_crds


@pytest.fixture(scope="module")
def bare_api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real API server (and etcd) of its own, where no CRD was ever installed."""
    plane = ControlPlane(tmp_path_factory.mktemp("bare") / "control-plane", find_tools())
    try:
        plane.start(api_only=True)
    except GroundError as e:
        plane.stop()
        pytest.fail(str(e), pytrace=False)
    yield plane
    plane.stop()


def run_operator(kubeconfig: Path, namespaces: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_OPERATOR_")}
    env |= {
        "KUBECONFIG": str(kubeconfig),
        "KUBETUNE_OPERATOR_NAMESPACES": namespaces,
        "KUBETUNE_OPERATOR_METRICS_PORT": str(free_port()),
        "KUBETUNE_OPERATOR_HEALTH_PORT": str(free_port()),
        "KUBETUNE_OPERATOR_LEASE_NAMESPACE": namespaces.split(",")[0] or "default",
    }
    # It must end by itself, promptly: the timeout is the failure of "retrying forever".
    return subprocess.run(
        [sys.executable, "-m", "kubetune", "operator"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("namespaces", ["team-a", ""], ids=["namespaced", "cluster-wide"])
def test_without_the_crd_the_operator_says_how_to_install_it_and_exits(
    bare_api_server: ControlPlane, namespaces: str
) -> None:
    result = run_operator(bare_api_server.kubeconfig, namespaces)
    assert result.returncode == ExitCode.INVALID_CONFIG, result.stderr
    assert (
        "the CustomResourceDefinition tuningjobs.kubetune.dev (version v1alpha1) is not installed"
        in result.stderr
    )
    assert (
        "kubectl apply --server-side -f crds/ or install the Helm chart with crds.install=true"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_without_permission_to_list_tuningjobs_the_operator_says_so_and_exits(
    cluster: Cluster, namespace: str
) -> None:
    install_crds(cluster)
    cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "no-rights"}})
    kubeconfig = cluster.kubeconfig_for_service_account(namespace, "no-rights")
    result = run_operator(kubeconfig, namespace)
    assert result.returncode == ExitCode.INVALID_CONFIG, result.stderr
    assert f"the operator may not list tuningjobs in namespace '{namespace}'" in result.stderr
    assert (
        "charts/kubetune/templates/rbac.yaml" in result.stderr and "Traceback" not in result.stderr
    )
