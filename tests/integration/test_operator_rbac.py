"""The operator works with exactly the permissions the Helm chart grants it.

The chart's RBAC (templates/rbac.yaml, rules in _helpers.tpl `kubetune.operatorRules`)
is the one definition of what the operator may do; this test binds a ServiceAccount
to exactly those rules, as `helm template` renders them, and runs a TuningJob through.
(tests/integration/test_chart_install.py proves them minimal, too.)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune.operator.settings import ENV_PREFIX
from tests.ground.cluster import Cluster
from tests.integration.operator_support import (
    OperatorProcess,
    create,
    end_pod,
    install_crds,
    running_pod,
    tuningjob,
    wait_events,
    wait_phase,
)
from tests.unit.chart_support import RELEASE, render


def chart_rbac() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """The operator's cluster-wide rules, its leader-election rules and its Lease's name."""
    rendered = render()  # default values: every namespace, leader election on
    fullname = f"{RELEASE}-kubetune"
    cluster_rules = rendered.one("ClusterRole", fullname)["rules"]
    lease_rules = rendered.one("Role", f"{fullname}-leader-election")["rules"]
    return cluster_rules, lease_rules, rendered.operator_env[ENV_PREFIX + "LEASE_NAME"]


def test_operator_runs_with_the_charts_rbac(
    cluster: Cluster, gpu_nodes: object, namespace_factory: Callable[..., str], tmp_path: Path
) -> None:
    cluster_rules, lease_rules, lease_name = chart_rbac()
    install_crds(cluster)
    ns = namespace_factory("rbac")
    home = namespace_factory("rbac-home", restricted=False)
    account = "kubetune-operator"
    cluster.core.create_namespaced_service_account(home, {"metadata": {"name": account}})
    role = f"kubetune-operator-{ns}"
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": home}]
    cluster.rbac.create_cluster_role({"metadata": {"name": role}, "rules": cluster_rules})
    cluster.rbac.create_cluster_role_binding(
        {
            "metadata": {"name": role},
            "subjects": subject,
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
        }
    )
    cluster.rbac.create_namespaced_role(home, {"metadata": {"name": "lease"}, "rules": lease_rules})
    cluster.rbac.create_namespaced_role_binding(
        home,
        {
            "metadata": {"name": "lease"},
            "subjects": subject,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease"},
        },
    )
    kubeconfig = cluster.kubeconfig_for_service_account(home, account)
    operator = OperatorProcess(
        cluster, tmp_path, [ns], lease_namespace=home, kubeconfig=kubeconfig, lease_name=lease_name
    ).start()
    try:
        create(cluster, ns, tuningjob("least-privilege"))
        pod = running_pod(cluster, ns, "least-privilege")
        # The operator must see the pod run (it reconciles a moment after a pod changes)
        # for the Running status and its Event to be written with these permissions.
        wait_phase(cluster, ns, "least-privilege", "Running")
        end_pod(cluster, pod, 0)
        wait_phase(cluster, ns, "least-privilege", "Succeeded")
        wait_events(cluster, ns, "least-privilege", "Training", "Succeeded")
        # A refusal, as kopf or the operator logs it; not a number that merely ends in 403
        # (a random port did).
        refusals = [
            line for line in operator.log().splitlines() if re.search(r"Forbidden|\b403\b", line)
        ]
        assert not refusals, refusals
    finally:
        operator.stop()
        cluster.rbac.delete_cluster_role_binding(role)
        cluster.rbac.delete_cluster_role(role)
