"""The operator on the real control plane, cut off from it or paused past its Lease.

Each test's docstring is its row in docs/reliability.md.
"""

from __future__ import annotations

import datetime
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tests.faults.proxy import FaultProxy
from tests.ground.cluster import Cluster, wait_for
from tests.integration.operator_support import (
    OperatorProcess,
    create,
    end_pod,
    get,
    install_crds,
    jobs,
    running_pod,
    tuningjob,
    wait_phase,
)

PARTITION_S = 30.0


def _kubeconfig_through(cluster: Cluster, proxy: FaultProxy, path: Path) -> Path:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for entry in config["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_api_server_unreachable_for_30s_converges_without_duplicates_or_stale_status(
    cluster: Cluster,
    gpu_nodes: object,
    namespace_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    """The operator cut off from the API server for 30 s (every connection reset, new ones
    refused) while a TuningJob is deleted, another created and a third one's trainer
    finishes: once it reconnects, each TuningJob has at most one Job, the new one runs,
    the finished one is Succeeded (no stale Running), the deleted one's Job is gone."""
    install_crds(cluster)
    ns = namespace_factory("partition")
    upstream = urlsplit(cluster.server)
    proxy = FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 443)
    kubeconfig = _kubeconfig_through(cluster, proxy, tmp_path / "through-proxy.kubeconfig")
    operator = OperatorProcess(
        cluster,
        tmp_path,
        [ns],
        lease_namespace=ns,
        kubeconfig=kubeconfig,
        lease_duration_seconds=60,
        lease_renew_deadline_seconds=50,
        lease_retry_seconds=2,
    ).start()
    try:
        for name in ("keep", "gone"):
            create(cluster, ns, tuningjob(name))
        for name in ("keep", "gone"):
            wait_phase(cluster, ns, name, "Running")
        keep_pod = running_pod(cluster, ns, "keep")

        cut_at = time.monotonic()
        proxy.set("refuse")
        proxy.cut()
        cluster.custom.delete_namespaced_custom_object(
            "kubetune.dev", "v1alpha1", ns, "tuningjobs", "gone", propagation_policy="Background"
        )
        create(cluster, ns, tuningjob("new"))
        end_pod(cluster, keep_pod, 0)
        time.sleep(max(0.0, PARTITION_S - (time.monotonic() - cut_at)))
        assert proxy.faults["refuse"] > 0, "the operator tried and was refused"
        assert get(cluster, ns, "keep")["status"]["phase"] == "Running", "stale while cut off"
        proxy.set("pass")

        wait_phase(cluster, ns, "new", "Running", timeout=120)
        wait_phase(cluster, ns, "keep", "Succeeded", timeout=120)
        wait_for(lambda: not jobs(cluster, ns, "gone"), timeout=60, what="the deleted one's Job")
        for name in ("keep", "new"):
            assert len(jobs(cluster, ns, name)) == 1, name
        assert operator.process.exit_code() is None, "the operator rode it out"
    finally:
        operator.stop()
        proxy.close()


def test_a_leader_paused_past_its_lease_writes_nothing_when_it_resumes(
    cluster: Cluster,
    gpu_nodes: object,
    namespace_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    """SIGSTOP the leader past its Lease (6 s; renew deadline 4 s): the standby takes
    over and starts a TuningJob created meanwhile; on SIGCONT the old leader's fence is
    closed (its last renewal is older than the renew deadline): it creates no Job,
    writes no status and posts no Event, and exits 1 to restart as a standby."""
    install_crds(cluster)
    ns = namespace_factory("pause")
    leader = OperatorProcess(cluster, tmp_path, [ns], lease_namespace=ns, name="replica-a").start(
        leader=True
    )
    standby = OperatorProcess(cluster, tmp_path, [ns], lease_namespace=ns, name="replica-b").start(
        leader=False
    )
    try:
        create(cluster, ns, tuningjob("before"))
        wait_phase(cluster, ns, "before", "Running")
        os.killpg(leader.process.pid, signal.SIGSTOP)
        wait_for(lambda: standby.health().get("role") == "leader", timeout=60, what="the take-over")
        create(cluster, ns, tuningjob("during"))
        wait_phase(cluster, ns, "during", "Running")
        log_before = leader.process.log_path.read_text()
        resumed_at = datetime.datetime.now(datetime.UTC)
        os.killpg(leader.process.pid, signal.SIGCONT)
        wait_for(lambda: leader.process.exit_code() is not None, timeout=60, what="A to exit")
        assert leader.process.exit_code() == 1
        after = leader.process.log_path.read_text()[len(log_before) :]
        assert "created Job" not in after, after
        assert ": Running (" not in after and ": Pending (" not in after, after
        events = cluster.core.list_namespaced_event(ns).items
        late = [
            e
            for e in events
            if e.reporting_instance == "replica-a"
            and (e.event_time or e.last_timestamp or e.first_timestamp)
            and (e.event_time or e.last_timestamp or e.first_timestamp) >= resumed_at
        ]
        assert not late, [e.message for e in late]
        for name in ("before", "during"):
            assert len(jobs(cluster, ns, name)) == 1, name
    finally:
        for replica in (standby, leader):
            if replica.process.exit_code() is None:
                os.killpg(replica.process.pid, signal.SIGCONT)
            replica.stop()
