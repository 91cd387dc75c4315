"""The Helm chart installed into the real control plane, as a user installs it.

One release lives through the module, in order: `helm install` (namespaced mode);
the operator, configured from the installed Deployment's environment, runs here under
the chart's ServiceAccount token and handles TuningJobs; `helm upgrade`; `helm
uninstall`, after which only what docs/install.md says stays is left.

RBAC is proven sufficient and minimal from what the API server answered the operator:
a recording pass-through (api_recorder.py) sits between the operator and the API
server, so every (group, resource, verb) the operator asked for is known, with the
API server's verdict. Sufficient: nothing the operator asked for was refused.
Minimal: every verb the chart grants was used (the one exception is documented next
to its rule). The scenario exercises every path that needs a permission.

The release's Deployment has replicaCount 0: the operator's image is not built here,
and its pod could not run on the test ground anyway; the process runs locally instead,
with exactly the pod's environment and identity.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from tests.ground.cluster import Cluster, wait_for
from tests.ground.kubeconfig import read_server
from tests.ground.process import ManagedProcess, free_port
from tests.integration.api_recorder import ApiRecorder, ApiRequest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
RELEASE = "kubetune"
FULLNAME = "kubetune"  # the release name holds the chart name
CRD = "tuningjobs.kubetune.dev"
SECRET = "s3-credentials"

# Granted but not used on this control plane, and why (the chart says the same).
UNUSED_BY_DESIGN = {
    # Checked only by the OwnerReferencesPermissionEnforcement admission plugin (OpenShift).
    ("kubetune.dev", "tuningjobs/finalizers", "update"),
}


@dataclass
class Release:
    namespace: str  # where the operator runs
    watched: str  # the namespace it handles
    unwatched: str
    values: Path
    install_output: str


def helm(cluster: Cluster, *args: str, check: bool = True) -> Any:
    return cluster.helm(*args, check=check, timeout=180)


@pytest.fixture(scope="module")
def release(
    cluster: Cluster, namespace_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    namespace = namespace_factory("kubetune-system")
    watched = namespace_factory("team")
    unwatched = namespace_factory("other")
    values = tmp_path_factory.mktemp("chart") / "values.yaml"
    values.write_text(yaml.safe_dump({
        "watchNamespaces": [watched],
        "replicaCount": 0,
        # The GPU Job's path (the Validating step has its own tests: test_operator_validating).
        "operator": {"s3": {"endpoint": "http://s3.invalid:8333", "credentialsSecret": SECRET},
                     "validation": {"enabled": False}},
    }))  # fmt: skip
    # The operator tests may have applied the CRD with kubectl already: the release adopts it.
    result = helm(cluster, "install", RELEASE, str(CHART), "--namespace", namespace, "--values", str(values),
                  "--take-ownership")  # fmt: skip
    yield Release(namespace, watched, unwatched, values, result.stdout)
    helm(cluster, "uninstall", RELEASE, "--namespace", namespace, check=False)


def objects_of_release(cluster: Cluster, namespaces: list[str]) -> set[tuple[str, str, str]]:
    """(kind, namespace, name) of everything labelled as this release's."""
    selector = f"app.kubernetes.io/instance={RELEASE}"
    found: set[tuple[str, str, str]] = set()
    namespaced = "serviceaccounts,services,deployments,roles,rolebindings,configmaps,poddisruptionbudgets,networkpolicies"
    for namespace in namespaces:
        listed = json.loads(
            cluster.kubectl("get", namespaced, "-n", namespace, "-l", selector, "-o", "json").stdout
        )
        found |= {(o["kind"], namespace, o["metadata"]["name"]) for o in listed["items"]}
    cluster_scoped = "clusterroles,clusterrolebindings,customresourcedefinitions"
    listed = json.loads(cluster.kubectl("get", cluster_scoped, "-l", selector, "-o", "json").stdout)
    found |= {(o["kind"], "", o["metadata"]["name"]) for o in listed["items"]}
    return found


def can_i(cluster: Cluster, release: Release, verb: str, resource: str, namespace: str) -> bool:
    subject = f"system:serviceaccount:{release.namespace}:{FULLNAME}"
    result = cluster.kubectl(
        "auth", "can-i", verb, resource, "-n", namespace, "--as", subject, check=False
    )
    return result.stdout.strip() == "yes"


# --- install ---------------------------------------------------------------------------


def test_install_creates_the_documented_objects(cluster: Cluster, release: Release) -> None:
    objects = objects_of_release(cluster, [release.namespace, release.watched, release.unwatched])
    assert objects == {
        ("CustomResourceDefinition", "", CRD),
        ("ServiceAccount", release.namespace, FULLNAME),
        ("Service", release.namespace, f"{FULLNAME}-metrics"),
        ("Deployment", release.namespace, FULLNAME),
        ("Role", release.namespace, f"{FULLNAME}-leader-election"),
        ("RoleBinding", release.namespace, f"{FULLNAME}-leader-election"),
        ("Role", release.watched, FULLNAME),
        ("RoleBinding", release.watched, FULLNAME),
        ("ClusterRole", "", f"{FULLNAME}-edit"),
        ("ClusterRole", "", f"{FULLNAME}-view"),
    }
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD}")
    # The API server accepted the restricted pod template in a restricted namespace.
    deployment = cluster.apps.read_namespaced_deployment(FULLNAME, release.namespace)
    assert deployment.spec.template.spec.security_context.run_as_non_root is True


def test_install_notes_warn_about_the_missing_secret(release: Release) -> None:
    assert (
        f'WARNING: there is no Secret "{SECRET}" in namespace {release.watched}'
        in release.install_output
    )


def test_permissions_stop_at_the_watched_namespace(cluster: Cluster, release: Release) -> None:
    assert can_i(cluster, release, "watch", f"{PLURAL}.{GROUP}", release.watched)
    assert can_i(cluster, release, "create", "jobs.batch", release.watched)
    assert not can_i(cluster, release, "watch", f"{PLURAL}.{GROUP}", release.unwatched)
    assert not can_i(cluster, release, "create", "jobs.batch", release.unwatched)
    for namespace in (release.watched, release.namespace):
        assert not can_i(cluster, release, "get", "secrets", namespace)
        assert not can_i(cluster, release, "delete", "jobs.batch", namespace)
    # People: the namespace's editors may create TuningJobs, its viewers only read them.
    cluster.kubectl(
        "create", "rolebinding", "viewer", "--clusterrole=view", "--user=ada", "-n", release.watched
    )
    assert (
        cluster.kubectl(
            "auth", "can-i", "list", f"{PLURAL}.{GROUP}", "-n", release.watched, "--as", "ada"
        ).stdout.strip()
        == "yes"
    )
    assert (
        cluster.kubectl(
            "auth",
            "can-i",
            "create",
            f"{PLURAL}.{GROUP}",
            "-n",
            release.watched,
            "--as",
            "ada",
            check=False,
        ).stdout.strip()
        == "no"
    )


def test_install_refuses_a_watched_namespace_that_does_not_exist(
    cluster: Cluster, release: Release
) -> None:
    result = helm(cluster, "install", "kubetune-typo", str(CHART), "--namespace", release.namespace,
                  "--set", "crds.install=false", "--set", "watchNamespaces={team-tyop}", check=False)  # fmt: skip
    assert result.returncode != 0
    assert 'watchNamespaces: namespace "team-tyop" does not exist' in result.stderr
    assert "kubetune-typo" not in helm(cluster, "list", "--all-namespaces", "--short").stdout


def test_cluster_wide_install_grants_every_namespace(
    cluster: Cluster, release: Release, namespace_factory: Any
) -> None:
    namespace = namespace_factory("kubetune-wide")
    helm(cluster, "install", "wide", str(CHART), "--namespace", namespace,
         "--set", "crds.install=false", "--set", "replicaCount=0")  # fmt: skip
    try:
        subject = f"system:serviceaccount:{namespace}:wide-kubetune"
        for ns in (release.watched, release.unwatched):
            assert (
                cluster.kubectl(
                    "auth", "can-i", "watch", f"{PLURAL}.{GROUP}", "-n", ns, "--as", subject
                ).stdout.strip()
                == "yes"
            )
        assert (
            cluster.kubectl(
                "auth", "can-i", "get", "secrets", "-A", "--as", subject, check=False
            ).stdout.strip()
            == "no"
        )
    finally:
        helm(cluster, "uninstall", "wide", "--namespace", namespace)


# --- the operator, as the chart configures it and with the chart's identity -------------------


class ChartOperator:
    """`kubetune operator` with the installed Deployment's environment and ServiceAccount."""

    def __init__(self, cluster: Cluster, release: Release, folder: Path):
        deployment = cluster.apps.read_namespaced_deployment(FULLNAME, release.namespace)
        (container,) = deployment.spec.template.spec.containers
        env = {e.name: e.value for e in container.env if e.value is not None}
        # Local ports: the pod's are taken on a shared machine.
        self.health_port, metrics_port = free_port(), free_port()
        env["KUBETUNE_OPERATOR_HEALTH_PORT"] = str(self.health_port)
        env["KUBETUNE_OPERATOR_METRICS_PORT"] = str(metrics_port)
        self.env = env

        token_kubeconfig = cluster.kubeconfig_for_service_account(release.namespace, FULLNAME)
        token = yaml.safe_load(token_kubeconfig.read_text())["users"][0]["user"]["token"]
        server, ca_pem = read_server(cluster.kubeconfig)
        self.recorder = ApiRecorder(server, ca_pem, free_port()).start()
        kubeconfig = self.recorder.write_kubeconfig(
            folder / "operator.kubeconfig", token, release.namespace
        )

        process_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KUBETUNE_OPERATOR_", "KUBERNETES_"))
        }
        process_env.update(env, KUBECONFIG=str(kubeconfig), POD_NAME=f"{FULLNAME}-local")
        self.process = ManagedProcess("chart-operator", [sys.executable, "-m", "kubetune", "operator"],
                                      folder / "operator.log", env=process_env, cwd=ROOT)  # fmt: skip

    def start(self) -> None:
        self.process.start()

        def leading() -> bool:
            self.process.check()
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
                ) as r:
                    return json.loads(r.read()).get("role") == "leader"
            except OSError:
                return False

        wait_for(leading, timeout=60, what=f"the operator to lead\n{self.process.log_tail(40)}")

    def stop(self) -> None:
        self.process.stop(grace=20)
        self.recorder.stop()


def tuningjob(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TuningJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "s3://models/tiny/"},
            "dataset": {"source": "s3://datasets/dolly.jsonl"},
            "output": {"destination": f"s3://adapters/{name}/"},
            "resources": {
                "gpus": 1,
                "cpu": "1",
                "memory": "1Gi",
                "shmSize": "64Mi",
                "scratchSize": "1Gi",
                "ephemeralStorage": "1Gi",
            },
            **spec,
        },
    }


def status_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return (
        cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get(
            "status"
        )
        or {}
    )


def wait_status(cluster: Cluster, namespace: str, name: str, **wanted: str) -> dict[str, Any]:
    return wait_for(
        lambda: (s := status_of(cluster, namespace, name)) and all(s.get(k) == v for k, v in wanted.items()) and s,
        timeout=60, what=f"TuningJob {name} to reach {wanted} (now {status_of(cluster, namespace, name)})",
    )  # fmt: skip


def granted_rules(cluster: Cluster, release: Release) -> set[tuple[str, str, str]]:
    """(group, resource, verb) the chart's Roles give the operator, as installed."""
    granted = set()
    for namespace, name in (
        (release.watched, FULLNAME),
        (release.namespace, f"{FULLNAME}-leader-election"),
    ):
        role = cluster.rbac.read_namespaced_role(name, namespace)
        for rule in role.rules:
            granted |= {
                (g, r, v) for g in rule.api_groups for r in rule.resources for v in rule.verbs
            }
    return granted


@pytest.fixture(scope="module")
def operator_run(
    cluster: Cluster, release: Release, gpu_nodes: Any, tmp_path_factory: pytest.TempPathFactory
) -> list[ApiRequest]:
    """Run the operator through a scenario that needs each of its permissions; return its requests."""
    ns = release.watched
    cluster.core.create_namespaced_secret(ns, {"metadata": {"name": SECRET},
                                               "stringData": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}})  # fmt: skip
    # A Job that is in the way of TuningJob "taken" (the operator must read it to tell).
    cluster.batch.create_namespaced_job(ns, {
        "metadata": {"name": "taken"},
        "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "c", "image": "busybox", "securityContext": {
                "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
                "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}}]}}},
    })  # fmt: skip
    operator = ChartOperator(cluster, release, tmp_path_factory.mktemp("chart-operator"))
    try:
        operator.start()
        custom = cluster.custom
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, tuningjob("first"))
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, tuningjob("taken"))
        wait_for(lambda: status_of(cluster, ns, "first").get("jobName") and
                 cluster.batch.list_namespaced_job(ns, label_selector="kubetune.dev/tuningjob=first").items,
                 timeout=60, what="the Job of TuningJob first")  # fmt: skip
        wait_status(cluster, ns, "taken", reason="JobConflict")
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "first", {"spec": {"suspend": True}}
        )
        wait_status(cluster, ns, "first", phase="Suspended")
        wait_for(lambda: cluster.batch.read_namespaced_job("first", ns).spec.suspend, timeout=30,
                 what="the Job to be suspended")  # fmt: skip
        # At least one Lease renewal (every retry period) before stopping.
        wait_for(lambda: any(r.verb == "update" and r.resource == "leases" for r in operator.recorder.recorded()),
                 timeout=30, what="a Lease renewal")  # fmt: skip
    finally:
        operator.stop()
    return operator.recorder.recorded()


def test_operator_from_the_chart_handles_tuningjobs(
    cluster: Cluster, release: Release, operator_run: list[ApiRequest]
) -> None:
    ns = release.watched
    job = cluster.batch.read_namespaced_job("first", ns)
    container = job.spec.template.spec.containers[0]
    # The chart's settings reached the Job: the default S3 Secret and endpoint.
    secret_refs = {e.value_from.secret_key_ref.name for e in container.env if e.value_from}
    assert secret_refs == {SECRET}
    spec_json = next(e.value for e in container.env if e.name == "KUBETUNE_TUNINGJOB")
    assert json.loads(spec_json)["spec"]["s3"]["endpoint"] == "http://s3.invalid:8333"
    assert status_of(cluster, ns, "taken")["reason"] == "JobConflict"


def test_rbac_is_sufficient_nothing_the_operator_asked_was_refused(
    operator_run: list[ApiRequest],
) -> None:
    refused = sorted({(r.method, r.path, r.status) for r in operator_run if r.status in (401, 403)})
    assert refused == [], "the chart's RBAC refused the operator these requests"


def test_rbac_is_minimal_every_granted_verb_was_used(
    cluster: Cluster, release: Release, operator_run: list[ApiRequest]
) -> None:
    used = {r.permission for r in operator_run if r.group is not None and r.status < 400}
    granted = granted_rules(cluster, release)
    assert granted - used == UNUSED_BY_DESIGN, "granted to the operator but never used"
    # And everything used was granted (the API server's 2xx answers say so, too).
    assert used <= granted
    # Only in the namespaces the chart named.
    assert {r.namespace for r in operator_run if r.group is not None} <= {
        release.watched,
        release.namespace,
    }


# --- upgrade and uninstall -------------------------------------------------------------------


def test_upgrade_applies_new_settings_and_keeps_tuningjobs(
    cluster: Cluster, release: Release, operator_run: list[ApiRequest]
) -> None:
    helm(cluster, "upgrade", RELEASE, str(CHART), "--namespace", release.namespace, "--values", str(release.values),
         "--set", "operator.workers=3", "--set", "operator.defaults.memory=2Gi")  # fmt: skip
    deployment = cluster.apps.read_namespaced_deployment(FULLNAME, release.namespace)
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    assert env["KUBETUNE_OPERATOR_WORKERS"] == "3"
    assert env["KUBETUNE_OPERATOR_DEFAULT_MEMORY"] == "2Gi"
    assert (
        json.loads(helm(cluster, "history", RELEASE, "-n", release.namespace, "-o", "json").stdout)[
            -1
        ]["revision"]
        == 2
    )
    names = {
        o["metadata"]["name"]
        for o in cluster.custom.list_namespaced_custom_object(
            GROUP, VERSION, release.watched, PLURAL
        )["items"]
    }
    assert names == {"first", "taken"}


def test_uninstall_leaves_only_what_the_docs_say_stays(
    cluster: Cluster, release: Release, operator_run: list[ApiRequest]
) -> None:
    helm(cluster, "uninstall", RELEASE, "--namespace", release.namespace)
    left = objects_of_release(cluster, [release.namespace, release.watched])
    # docs/install.md, "Uninstall": the CRD (and so the TuningJobs), the Lease.
    assert left == {("CustomResourceDefinition", "", CRD)}
    crd = cluster.apiextensions.read_custom_resource_definition(CRD)
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    assert (
        len(
            cluster.custom.list_namespaced_custom_object(GROUP, VERSION, release.watched, PLURAL)[
                "items"
            ]
        )
        == 2
    )
    assert cluster.coordination.read_namespaced_lease(
        FULLNAME, release.namespace
    ).spec.holder_identity in (None, "")
    assert helm(cluster, "list", "-n", release.namespace, "--short").stdout.strip() == ""
