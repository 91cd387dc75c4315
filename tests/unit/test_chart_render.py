"""The Helm chart, rendered by the real helm binary (`helm lint`, `helm template`).

Each ci/*-values.yaml scenario must lint and render; the rendered objects are checked
against the parts of the project they must agree with: the operator's settings class
(every setting reachable from values, and parseable by the operator), the generated
CRD, the labels and metrics port the operator's Job builder puts on training pods,
the restricted Pod Security Standard, and the values schema's error messages.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune import __version__
from kubetune.api.contract import METRICS_PORT, METRICS_PORT_NAME
from kubetune.api.manifest import parse_tuningjob
from kubetune.api.trainer_metrics import TRAINER_PHASES as PHASES
from kubetune.operator import builders
from kubetune.operator.metrics import OperatorMetrics
from kubetune.operator.settings import ENV_PREFIX, Settings, load_settings
from tests.support.sensitive_names import flagged_by
from tests.unit.chart_support import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    ROOT,
    Rendered,
    helm,
    render,
    render_raw,
)

FULLNAME = f"{RELEASE}-kubetune"
CRD_FILE = "tuningjobs.kubetune.dev.yaml"


def ci(name: str) -> Path:
    path = CHART / "ci" / f"{name}-values.yaml"
    assert path in CI_VALUES, path
    return path


@pytest.fixture(scope="module")
def default() -> Rendered:
    return render()


# --- Every scenario ------------------------------------------------------------------


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_each_scenario_lints_strictly_and_renders(values: Path) -> None:
    helm("lint", "--strict", str(CHART), "--values", str(values), "--namespace", NAMESPACE)
    rendered = render(values)
    assert rendered.deployment["metadata"]["namespace"] == NAMESPACE
    for obj in rendered.objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE, obj["metadata"][
            "name"
        ]


def test_chart_version_follows_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    # The default trainer image is the one the operator itself defaults to.
    assert render().operator_env[ENV_PREFIX + "TRAINER_IMAGE"] == Settings().trainer_image


# --- The operator Deployment ---------------------------------------------------------


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """What breaks the restricted Pod Security Standard (the checks that apply here)."""
    problems = []
    pod_sc = pod_spec.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            problems.append(field)
    if any("hostPath" in v for v in pod_spec.get("volumes", [])):
        problems.append("hostPath volume")
    for c in pod_spec["containers"] + pod_spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or set(
            sc.get("capabilities", {}).get("add", [])
        ) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities must drop ALL")
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))):
            problems.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
    return problems


def test_operator_pod_meets_the_restricted_pod_security_standard(default: Rendered) -> None:
    pod = default.deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert default.operator_container["securityContext"]["readOnlyRootFilesystem"] is True


def test_restricted_check_catches_a_violation() -> None:
    """The checker above is not vacuous."""
    pod = {"containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": True}}]}
    assert len(restricted_violations(pod)) == 4


def test_operator_probes_resources_and_identity(default: Rendered) -> None:
    container = default.operator_container
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = default.operator_env
    assert ports == {
        "metrics": int(env[ENV_PREFIX + "METRICS_PORT"]),
        "health": int(env[ENV_PREFIX + "HEALTH_PORT"]),
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["args"] == ["operator"]
    # The Lease names the leader by its pod (operator/main.py identity()).
    assert {
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    } in container["env"]
    pod = default.deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == FULLNAME
    assert default.one("ServiceAccount", FULLNAME, NAMESPACE)
    service = default.one("Service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert (
        service["spec"]["selector"].items()
        <= default.deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_replicas_are_safe_only_with_leader_election() -> None:
    ha = render(ci("ha-monitoring"))
    assert ha.deployment["spec"]["replicas"] == 2
    assert ha.operator_env[ENV_PREFIX + "LEADER_ELECTION"] == "true"
    pdb = ha.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    # Crash-looping replicas (not Ready) may still be evicted, or they would block a drain.
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # One replica without a Lease: never two pods at once, even during a rollout.
    single = render(ci("external-crds"))
    assert single.deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert single.of_kind("PodDisruptionBudget") == []

    refused = render_raw(
        values={"replicaCount": 2, "operator": {"leaderElection": {"enabled": False}}}
    )
    assert refused.returncode != 0
    assert "replicaCount is 2 but operator.leaderElection.enabled is false" in refused.stderr


# --- Settings: values → environment → the operator's Settings --------------------------


def operator_settings(rendered: Rendered, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Load the operator's settings from exactly the environment the chart gives it."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in rendered.operator_env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_every_operator_setting_is_reachable_from_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting added to operator/settings.py and not to the chart fails here."""
    rendered = render(ci("all-settings"))
    chart_names = {k for k in rendered.operator_env if k.startswith(ENV_PREFIX)}
    setting_names = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert chart_names - setting_names == set(), (
        "the chart sets variables the operator does not know"
    )
    assert setting_names - chart_names == set(), (
        "operator settings the chart cannot set (templates/_env.tpl)"
    )

    defaults = {
        name: field.get_default(call_default_factory=True)
        for name, field in Settings.model_fields.items()
    }
    settings = operator_settings(rendered, monkeypatch)
    # Every value in all-settings-values.yaml differs from the default, and arrives.
    changed = {name for name, default in defaults.items() if getattr(settings, name) != default}
    assert set(Settings.model_fields) - changed == set(), (
        "all-settings-values.yaml leaves these at their default"
    )
    assert settings.namespaces == ["research"]
    assert settings.trainer_image == (
        "registry.example.com/kubetune-trainer@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert settings.image_pull_auth_refs == ["pull-a", "pull-b"]
    assert settings.gpu_resource_name == "nvidia.com/mig-3g.40gb"
    assert settings.gpu_node_selector == {"nvidia.com/gpu.product": "A100-SXM4-80GB"}
    assert [t.model_dump(by_alias=True, exclude_none=True) for t in settings.gpu_tolerations] == [
        {
            "key": "gpu",
            "operator": "Equal",
            "value": "true",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        }
    ]
    assert (settings.run_as_user, settings.run_as_group, settings.fs_group) == (2000, 2001, 2002)
    assert settings.progress_interval_seconds == 5.5
    assert (settings.metrics_port, settings.health_port) == (9090, 9091)
    assert settings.lease_name == "kubetune-research"
    assert settings.lease_namespace == NAMESPACE
    assert settings.s3_auth_ref == "team-s3"


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_each_scenario_gives_the_operator_valid_settings(
    values: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render(values)
    settings = operator_settings(rendered, monkeypatch)
    # The chart's defaults are the operator's where the operator has one that fits a cluster.
    chart_values = yaml.safe_load(values.read_text()) or {}
    if not chart_values.get("operator"):
        assert settings.gpu_tolerations == Settings().gpu_tolerations
        assert settings.run_as_user == Settings().run_as_user
    assert settings.namespaces == chart_values.get("watchNamespaces", [])


def test_unset_optional_settings_are_left_to_the_operator(default: Rendered) -> None:
    env = default.operator_env
    for name in (
        "NAMESPACES",
        "S3_ENDPOINT",
        "S3_AUTH_REF",
        "TRAINER_IMAGE_PULL_POLICY",
        "IMAGE_PULL_AUTH_REFS",
    ):
        assert ENV_PREFIX + name not in env


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_no_operator_variable_looks_like_a_credential_to_security_linters(values: Path) -> None:
    """kube-linter env-var-secret and polaris sensitiveContainerEnvVar pass the Deployment."""
    rendered = render(values)
    pod = rendered.deployment["spec"]["template"]["spec"]
    names = [e["name"] for c in pod["containers"] for e in c.get("env", [])]
    assert ENV_PREFIX + "TRAINER_IMAGE" in names
    assert {name: flagged_by(name) for name in names if flagged_by(name)} == {}


# --- RBAC ----------------------------------------------------------------------------


def operator_subject(rendered: Rendered) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}


def test_cluster_wide_rbac(default: Rendered) -> None:
    role = default.one("ClusterRole", FULLNAME)
    binding = default.one("ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": FULLNAME,
    }
    assert binding["subjects"] == [operator_subject(default)]
    # Nothing the operator does not do: no Secrets, no deletes, no wildcards.
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert "delete" not in rule["verbs"]
        assert "secrets" not in rule["resources"]
        assert "resourceNames" not in rule


def test_namespaced_rbac_grants_nothing_cluster_wide() -> None:
    rendered = render(ci("namespaced"))
    cluster_wide = render()
    for namespace in ("team-a", "team-b"):
        role = rendered.one("Role", FULLNAME, namespace)
        binding = rendered.one("RoleBinding", FULLNAME, namespace)
        assert role["rules"] == cluster_wide.one("ClusterRole", FULLNAME)["rules"]
        assert binding["subjects"] == [operator_subject(rendered)]
        assert binding["roleRef"]["kind"] == "Role"
    assert rendered.of_kind("ClusterRoleBinding") == []
    # The only ClusterRoles are the aggregated ones for people, bound to no one here.
    for role in rendered.of_kind("ClusterRole"):
        labels = role["metadata"]["labels"]
        assert any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels), role[
            "metadata"
        ]["name"]


def test_leader_election_may_touch_only_its_own_lease(default: Rendered) -> None:
    role = default.one("Role", f"{FULLNAME}-leader-election", NAMESPACE)
    lease = default.operator_env[ENV_PREFIX + "LEASE_NAME"]
    assert default.operator_env[ENV_PREFIX + "LEASE_NAMESPACE"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease],
            "verbs": ["get", "update"],
        },
    ]
    binding = default.one("RoleBinding", f"{FULLNAME}-leader-election", NAMESPACE)
    assert binding["subjects"] == [operator_subject(default)]
    assert render(ci("external-crds")).of_kind("Role") == []


def test_external_scenario_renders_only_the_operator() -> None:
    rendered = render(ci("external-crds"))
    assert {o["kind"] for o in rendered.objects} == {"Deployment", "Service"}
    assert (
        rendered.deployment["spec"]["template"]["spec"]["serviceAccountName"] == "kubetune-operator"
    )


def test_people_get_tuningjobs_through_the_default_roles(default: Rendered) -> None:
    edit = default.one("ClusterRole", f"{FULLNAME}-edit")
    view = default.one("ClusterRole", f"{FULLNAME}-view")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert "create" in edit["rules"][0]["verbs"]
    assert set(view["rules"][0]["verbs"]) == {"get", "list", "watch"}


# --- The CRD ----------------------------------------------------------------------------


def test_chart_crd_is_the_generated_one() -> None:
    """files/crds/ is a copy of crds/ (which `kubetune crd` generates): `make crds` writes both."""
    generated = (ROOT / "crds" / CRD_FILE).read_text()
    assert (CHART / "files" / "crds" / CRD_FILE).read_text() == generated, (
        "stale chart CRD: run `make crds`"
    )


def test_crd_renders_unchanged_and_is_kept_on_uninstall(default: Rendered) -> None:
    generated = yaml.safe_load((ROOT / "crds" / CRD_FILE).read_text())
    crd = default.one("CustomResourceDefinition", "tuningjobs.kubetune.dev")
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert generated["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()

    not_kept = render(values={"crds": {"keep": False}}).one("CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in not_kept["metadata"].get("annotations", {})
    assert render(ci("external-crds")).of_kind("CustomResourceDefinition") == []


# --- Monitoring -------------------------------------------------------------------------


def test_pod_monitor_selects_the_pods_the_operator_creates() -> None:
    rendered = render(ci("ha-monitoring"))
    monitor = rendered.one("PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    # The labels the Job builder puts on training pods.
    assert selector.items() <= builders.labels("any-job").items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == METRICS_PORT_NAME
    pod_label = re.sub(r"[^a-zA-Z0-9_]", "_", builders.TUNINGJOB_LABEL)
    assert {
        "sourceLabels": [f"__meta_kubernetes_pod_label_{pod_label}"],
        "targetLabel": "tuningjob",
    } in endpoint["relabelings"]
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"

    namespaced = render(ci("namespaced"), values={"podMonitor": {"enabled": True}}).one(
        "PodMonitor"
    )
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_service_monitor_scrapes_the_metrics_service() -> None:
    rendered = render(ci("ha-monitoring"))
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert render().of_kind("ServiceMonitor") == render().of_kind("PodMonitor") == []


# The trainer's metric names (kubetune.api.trainer_metrics; the trainer registers them).
TRAINER_METRICS = {
    "kubetune_trainer_step", "kubetune_trainer_total_steps", "kubetune_trainer_loss", "kubetune_trainer_eval_loss",
    "kubetune_trainer_learning_rate", "kubetune_trainer_grad_norm", "kubetune_trainer_tokens_total",
    "kubetune_trainer_tokens_per_second", "kubetune_trainer_gpu_memory_bytes", "kubetune_trainer_packing_efficiency",
    "kubetune_trainer_phase", "kubetune_trainer_s3_bytes_total",
}  # fmt: skip


def operator_series() -> set[str]:
    """The series names the operator exposes, from its own metrics registry."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in OperatorMetrics().registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_dashboard_queries_only_metrics_that_exist() -> None:
    rendered = render(ci("ha-monitoring"))
    config_map = rendered.one("ConfigMap", f"{FULLNAME}-dashboard", "monitoring")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["kubetune.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboards" / "kubetune.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bkubetune_[a-z0-9_]+", e)}
    assert used - (TRAINER_METRICS | operator_series()) == set()
    # What the issue asks the dashboard to show.
    for wanted in ("kubetune_operator_tuningjobs", "kubetune_trainer_loss", "kubetune_trainer_eval_loss",
                   "kubetune_trainer_tokens_per_second", "kubetune_trainer_gpu_memory_bytes",
                   "kubetune_trainer_s3_bytes_total"):  # fmt: skip
        assert wanted in used
    # Trainer panels filter by the labels the PodMonitor adds.
    assert all('tuningjob=~"$tuningjob"' in e for e in exprs if "kubetune_trainer_" in e)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def dashboard_file() -> dict[str, Any]:
    return json.loads((CHART / "files" / "dashboards" / "kubetune.json").read_text())


def test_dashboard_ranges_follow_the_scrape_interval() -> None:
    """A fixed range such as [1m] goes blank when Prometheus scrapes every 30 s or more."""
    exprs = [t["expr"] for p in dashboard_file()["panels"] for t in p.get("targets", [])]
    ranges = {r for e in exprs for r in re.findall(r"\[([^\]]*)\]", e)}
    assert ranges == {"$__rate_interval"}


def test_every_dashboard_panel_is_described() -> None:
    panels = [p for p in dashboard_file()["panels"] if p["type"] != "row"]
    assert [p["title"] for p in panels if not p.get("description", "").strip()] == []


def test_trainer_phase_panel_names_the_phases_the_trainer_has() -> None:
    (panel,) = [p for p in dashboard_file()["panels"] if p["title"] == "Trainer phase"]
    named = panel["description"].split("in order: ")[-1].rstrip(".").split(", ")
    assert named == list(PHASES)


# --- NetworkPolicy ----------------------------------------------------------------------


def test_network_policy_allows_what_the_operator_needs_and_no_more() -> None:
    rendered = render(ci("ha-monitoring"))
    policy = rendered.one("NetworkPolicy")
    spec = policy["spec"]
    assert (
        spec["podSelector"]["matchLabels"].items()
        <= rendered.deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    ingress_ports = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
    assert ingress_ports == {"metrics", "health"}
    egress = {p["port"]: rule.get("to") for rule in spec["egress"] for p in rule["ports"]}
    assert set(egress) == {53, 443, 6443, METRICS_PORT}
    assert egress[443] == [
        {"ipBlock": {"cidr": "10.96.0.1/32"}},
        {"ipBlock": {"cidr": "172.18.0.0/16"}},
    ]
    (trainers,) = egress[METRICS_PORT]
    assert trainers["podSelector"]["matchLabels"].items() <= builders.labels("x").items()
    assert render().of_kind("NetworkPolicy") == []


# --- Bad values: the schema and the templates say what is wrong ---------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"operator": {"s3": {"credentialsSecret": "S3_Creds"}}}, "/operator/s3/credentialsSecret"),
        ({"operator": {"s3": {"endpoint": "minio:9000"}}}, "/operator/s3/endpoint"),
        ({"operator": {"workers": 0}}, "/operator/workers': minimum: got 0, want 1"),
        (
            {"operator": {"trainer": {"runAsUser": 0}}},
            "/operator/trainer/runAsUser': minimum: got 0, want 1",
        ),
        ({"operator": {"defaults": {"memory": "64 GB"}}}, "/operator/defaults/memory"),
        (
            {"operator": {"logFormat": "xml"}},
            "/operator/logFormat': value must be one of 'json', 'text'",
        ),
        ({"watchNamespaces": ["Team-A"]}, "/watchNamespaces/0"),
        ({"watchNamespaces": ["a", "a"]}, "/watchNamespaces': items at 0 and 1 are equal"),
        (
            {"operator": {"gpu": {"tolerations": [{"operator": "Maybe"}]}}},
            "value must be one of 'Exists', 'Equal'",
        ),
        ({"image": {"digest": "latest"}}, "/image/digest"),
    ],
    ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else None,
)
def test_invalid_values_are_rejected_with_the_path(values: dict[str, Any], message: str) -> None:
    result = render_raw(values=values)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "operator": {
                    "leaderElection": {"leaseDurationSeconds": 5, "renewDeadlineSeconds": 10}
                }
            },
            "retryPeriodSeconds (2) < renewDeadlineSeconds (10) < leaseDurationSeconds (5) must hold",
        ),
        (
            {"serviceAccount": {"create": False}},
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
    ],
)
def test_inconsistent_values_are_refused_by_the_templates(
    values: dict[str, Any], message: str
) -> None:
    result = render_raw(values=values)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_images_are_pinned_by_digest_when_given() -> None:
    digest = "sha256:" + "ab" * 32
    rendered = render(values={"image": {"digest": digest}})
    assert rendered.operator_container["image"] == f"ghcr.io/kubetune/operator@{digest}"
    assert render().operator_container["image"] == f"ghcr.io/kubetune/operator:{__version__}"


# --- Registry, labels, pull Secrets, extra volumes ---------------------------------------


def test_global_registry_replaces_every_images_registry_and_labels_reach_every_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rendered = render(ci("ha-monitoring"))
    assert rendered.operator_container["image"] == (
        f"mirror.example.com:5000/kubetune/operator:{__version__}"
    )
    assert operator_settings(rendered, monkeypatch).trainer_image == (
        f"mirror.example.com:5000/kubetune/trainer:{__version__}"
    )
    # A repository without a registry gets the mirror put before it.
    plain = render(
        values={"global": {"imageRegistry": "mirror.corp"}, "image": {"repository": "kubetune/op"}}
    )
    assert plain.operator_container["image"] == f"mirror.corp/kubetune/op:{__version__}"
    for obj in rendered.objects:
        if obj["kind"] != "CustomResourceDefinition":
            assert obj["metadata"]["labels"]["team"] == "ml-platform", obj["kind"]
    pod = rendered.deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "ml-platform"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "mirror-pull"}]
    assert {"name": "corp-ca", "configMap": {"name": "corp-ca"}} in pod["spec"]["volumes"]
    assert {
        "name": "corp-ca",
        "mountPath": "/etc/ssl/corp",
        "readOnly": True,
    } in rendered.operator_container["volumeMounts"]


def test_pull_secrets_in_both_forms() -> None:
    rendered = render(values={"imagePullSecrets": ["a", {"name": "b"}]})
    assert rendered.deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": "a"},
        {"name": "b"},
    ]
    refused = render_raw(values={"imagePullSecrets": [{"secret": "a"}]})
    assert refused.returncode != 0 and "imagePullSecrets" in refused.stderr


def test_trainer_defaults_and_allowlists_reach_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = operator_settings(render(ci("all-settings")), monkeypatch)
    assert [e.model_dump(by_alias=True, exclude_none=True) for e in settings.default_env] == [
        {"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"},
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "token"}}},
    ]
    assert settings.default_pod_labels == {"cost-center": "ml-research"}
    assert settings.default_node_selector == {"team": "research"}
    assert settings.pod_scrape_annotations is True
    assert settings.allowed_trainer_images == ["registry.example.com/kubetune-trainer*"]
    assert settings.allowed_service_accounts == ["trainer", "team-*"]
    # The rendered trainer Job with these settings: defaults in, scrape annotations on.
    job = builders.build_job(
        parse_tuningjob(
            {
                "apiVersion": "kubetune.dev/v1alpha1",
                "kind": "TuningJob",
                "metadata": {"name": "x", "namespace": "research"},
                "spec": {
                    "model": {"source": "s3://m/x/"},
                    "dataset": {"source": "s3://d/x.jsonl"},
                    "output": {"destination": "s3://o/x/"},
                },
            }
        ),
        settings,
    )
    template = job["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert template["metadata"]["labels"]["cost-center"] == "ml-research"
    assert template["spec"]["nodeSelector"]["team"] == "research"


# --- Monitors and alerts ------------------------------------------------------------------


def test_monitors_take_extra_relabelings() -> None:
    rendered = render(ci("ha-monitoring"))
    (endpoint,) = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["metricRelabelings"][0]["action"] == "drop"
    (pod_endpoint,) = rendered.one("PodMonitor")["spec"]["podMetricsEndpoints"]
    targets = [r["targetLabel"] for r in pod_endpoint["relabelings"]]
    assert targets == ["tuningjob", "namespace", "pod", "node"]  # the chart's own first


def test_prometheus_rule_alerts_on_metrics_that_exist() -> None:
    rendered = render(ci("ha-monitoring"))
    rule = rendered.one("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "TuningJobFailed",
        "TuningJobStuckPending",
        "TuningJobNoProgress",
        "KubetuneOperatorDown",
    }
    used = {m for r in alerts.values() for m in re.findall(r"\bkubetune_[a-z0-9_]+", r["expr"])}
    assert used - (TRAINER_METRICS | operator_series()) == set()
    assert "> 2700" in alerts["TuningJobStuckPending"]["expr"]  # pendingMinutes: 45
    # The operator-down alert names the job the ServiceMonitor scrapes: the metrics Service.
    service = rendered.one("Service")["metadata"]["name"]
    assert f'job="{service}"' in alerts["KubetuneOperatorDown"]["expr"]
    # The trainer alert groups by the labels the PodMonitor adds.
    assert "by (namespace, tuningjob)" in alerts["TuningJobNoProgress"]["expr"]
    assert not render().of_kind("PrometheusRule")


def test_pending_metric_measures_the_longest_wait() -> None:
    from prometheus_client import generate_latest

    metrics = OperatorMetrics(pending_since=lambda: [100.0, 160.0], clock=lambda: 400.0)
    text = generate_latest(metrics.registry).decode()
    assert "kubetune_operator_pending_oldest_seconds 300.0" in text
    assert (
        "kubetune_operator_pending_oldest_seconds 0.0"
        in generate_latest(OperatorMetrics().registry).decode()
    )
