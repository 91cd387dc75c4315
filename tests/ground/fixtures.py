"""Pytest fixtures for the test ground; loaded by tests/conftest.py.

Session-scoped, each part started on first use and stopped at the end of the
session, also after failures and Ctrl-C (and, through PR_SET_PDEATHSIG, if pytest
itself is killed):

- `ground`: the `Ground` (tests/ground/ground.py) the fixtures below come from.
- `cluster`: a `Cluster` (tests/ground/cluster.py): `.kubeconfig`, `.api`, `.core`,
  `.batch`, `.custom`, `.apiextensions`, `.kubectl(...)`, `.helm(...)`,
  `.kubeconfig_for_service_account(ns, name)`, `.kubeconfig_for_user(user, groups)`,
  `.create_namespace(...)`. The built-in control plane, or the cluster of
  KUBETUNE_TEST_KUBECONFIG.
- `gpu_nodes`: `KwokNodes` (tests/ground/kwok.py): two 8-GPU nodes, tainted
  `nvidia.com/gpu=present:NoSchedule`, and one CPU node; pods there run only in name.
- `local_node`: `LocalNode` (tests/ground/localnode.py): the node whose pods really
  run here; `.scheduling` places a pod on it, `.pod_log(ns, name)` reads its output.

Function-scoped:

- `namespace`: a fresh namespace enforcing the restricted Pod Security Standard,
  deleted after the test. `namespace_factory(prefix, restricted=True)` makes more,
  e.g. for a module-scoped fixture of your own.

A part that cannot start fails every test that needs it with its log tail and what
to do; it never skips.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest

from tests.ground.cluster import Cluster
from tests.ground.ground import Ground, external_kubeconfig
from tests.ground.kwok import KwokNodes
from tests.ground.localnode import LocalNode
from tests.ground.process import GroundError

log = logging.getLogger(__name__)

# How long each part took to start in this session: shown in pytest's summary.
_timings: dict[str, float] = {}


@pytest.fixture(scope="session")
def ground(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ground]:
    ground = Ground(tmp_path_factory.mktemp("ground"), external=external_kubeconfig())
    try:
        yield ground
    finally:
        _timings.update(ground.timings)
        ground.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _timings:
        parts = ", ".join(f"{part} {seconds:.1f}s" for part, seconds in _timings.items())
        terminalreporter.write_line(f"test ground started: {parts}")


def _start(start: Callable[[], object]) -> object:
    try:
        return start()
    except GroundError as e:
        failure = str(e)
    pytest.fail(failure, pytrace=False)  # outside the except: no chained traceback


@pytest.fixture(scope="session")
def cluster(ground: Ground) -> Cluster:
    return _start(ground.cluster)  # type: ignore[return-value]


@pytest.fixture(scope="session")
def gpu_nodes(ground: Ground) -> KwokNodes:
    return _start(ground.kwok)  # type: ignore[return-value]


@pytest.fixture(scope="session")
def local_node(ground: Ground) -> LocalNode:
    return _start(ground.local_node)  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _local_node_survives(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test after which the local node is found dead (with its log), rather
    than letting later tests time out waiting for pods nobody runs."""
    yield
    if "local_node" in request.fixturenames:
        node: LocalNode = request.getfixturevalue("local_node")
        try:
            node.check()
        except GroundError as e:
            failure = str(e)
        else:
            return
        pytest.fail(failure, pytrace=False)


@pytest.fixture(scope="session")
def namespace_factory(cluster: Cluster) -> Iterator[Callable[..., str]]:
    created: list[str] = []

    def make(prefix: str = "test", *, restricted: bool = True) -> str:
        name = cluster.create_namespace(prefix, restricted=restricted)
        created.append(name)
        return name

    yield make
    for name in created:
        cluster.delete_namespace(name)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace enforcing the restricted Pod Security Standard."""
    name = cluster.create_namespace("t")
    yield name
    cluster.delete_namespace(name)
