"""kubeconform, strict, on what kubetune gives a cluster: the chart, the operator's Jobs, the examples.

Each is validated against the schemas of the chart's minimum Kubernetes (1.31) and of
the newest release kubernetes-validate ships, the TuningJob against a schema made from
this checkout's CRD (tests/unit/kubeconform_support.py). Seconds in all.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.chart_support import CI_VALUES, ROOT, render_raw
from tests.unit.kubeconform_support import (
    KUBERNETES_VERSIONS,
    SKIPPED_KINDS,
    kubeconform,
    problems,
)

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def chart_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """`helm template` of every ci/*-values.yaml scenario, one file each."""
    folder = tmp_path_factory.mktemp("chart")
    files = []
    for values in CI_VALUES:
        result = render_raw(values)
        assert result.returncode == 0, result.stderr
        path = folder / values.name
        path.write_text(result.stdout)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def rendered_jobs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """`kubetune render -f` of every example: the Jobs the operator creates for them."""
    folder = tmp_path_factory.mktemp("jobs")
    files = [folder / example.name for example in EXAMPLES]
    # The real command, one process per example, all at once (each mostly imports).
    outputs = [path.open("w") for path in files]
    running = [
        subprocess.Popen(
            [sys.executable, "-m", "kubetune", "render", "-f", str(example)],
            stdout=output,
            stderr=subprocess.PIPE,
            text=True,
        )
        for example, output in zip(EXAMPLES, outputs, strict=True)
    ]
    for process, output, example in zip(running, outputs, EXAMPLES, strict=True):
        _, stderr = process.communicate(timeout=120)
        output.close()
        assert process.returncode == 0, f"kubetune render -f {example}: {stderr}"
    return files


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_chart_scenario_is_valid(chart_files: list[Path], version: str) -> None:
    results = kubeconform(chart_files, version)
    assert problems(results) == []
    assert len(results) == sum(len(documents(p)) for p in chart_files)
    skipped = {r["kind"] for r in results if r["status"] == "statusSkipped"}
    assert skipped == set(SKIPPED_KINDS), "only prometheus-operator's kinds lack a schema"
    kinds = {r["kind"] for r in results if r["status"] == "statusValid"}
    assert {"Deployment", "CustomResourceDefinition", "PodDisruptionBudget", "ConfigMap"} <= kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_examples_and_the_jobs_rendered_for_them_are_valid(
    rendered_jobs: list[Path], version: str
) -> None:
    results = kubeconform([*EXAMPLES, *rendered_jobs], version)
    assert problems(results) == []
    counted = {(r["kind"], r["status"]) for r in results}
    assert counted == {
        ("TuningJob", "statusValid"),
        ("Secret", "statusValid"),
        ("Job", "statusValid"),
    }
    assert sum(r["kind"] == "Job" for r in results) == len(EXAMPLES)


def broken(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(document)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def test_kubeconform_rejects_what_the_api_server_would(
    rendered_jobs: list[Path], tmp_path: Path
) -> None:
    """The checks above are not vacuous: strict schemas, the CRD's included, and no silent skips."""
    (tuningjob,) = [d for d in documents(EXAMPLES[0]) if d["kind"] == "TuningJob"]
    (job,) = documents(rendered_jobs[0])
    cases = {
        "job-unknown-field": broken(job, ("spec", "backofLimit"), 3),
        "job-wrong-type": broken(job, ("spec", "completions"), "one"),
        "tuningjob-unknown-field": broken(tuningjob, ("spec", "trainng"), {}),
        # (epochs is "auto" or a number: untyped in the CRD, checked by the operator)
        "tuningjob-wrong-type": broken(tuningjob, ("spec", "training"), {"maxSeqLength": "many"}),
        "tuningjob-bad-metadata": broken(tuningjob, ("metadata", "labels"), ["a"]),
        "unknown-kind": {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": "w"},
        },
    }
    for name, document in cases.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(document))
    results = kubeconform(sorted(tmp_path.glob("*.yaml")), KUBERNETES_VERSIONS[0])
    statuses = {Path(r["filename"]).stem: r["status"] for r in results}
    assert statuses == {
        **{name: "statusInvalid" for name in cases if name != "unknown-kind"},
        "unknown-kind": "statusError",
    }
    messages = {Path(r["filename"]).stem: r["msg"] for r in results}
    assert "additional properties 'trainng' not allowed" in messages["tuningjob-unknown-field"]


def test_the_tool_scripts_pass_shellcheck() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    scripts = [ROOT / "hack" / "k8s-schemas.sh", ROOT / "hack" / "go-tool.sh"]
    result = subprocess.run(
        [str(shellcheck), *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
