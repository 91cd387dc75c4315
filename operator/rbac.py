"""The Kubernetes permissions the operator needs: the one list the chart's RBAC must match.

tests/integration/test_operator_rbac.py runs the operator as a ServiceAccount bound to
exactly these rules, so a missing permission fails a test rather than a user's install.
"""

from __future__ import annotations

from typing import Any

# Cluster-wide (a ClusterRole; for a namespaced install, the same rules in a Role per
# watched namespace, except the CRD and namespace rules, which kopf needs cluster-wide).
CLUSTER_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["kubetune.dev"], "resources": ["tuningjobs"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["kubetune.dev"],
        "resources": ["tuningjobs/status"],
        "verbs": ["get", "patch", "update"],
    },
    # ownerReferences with blockOwnerDeletion need this where the OwnerReferencesPermissionEnforcement
    # admission plugin is on (it is on OpenShift and many hardened clusters).
    {"apiGroups": ["kubetune.dev"], "resources": ["tuningjobs/finalizers"], "verbs": ["update"]},
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["get", "list", "watch", "create", "patch"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},  # kopf's own Events
    # kopf watches which CRDs and namespaces exist, to start and stop its watches.
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
]

# In the operator's own namespace (a Role): the leader-election Lease.
LEASE_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "create", "update"],
    },
]
