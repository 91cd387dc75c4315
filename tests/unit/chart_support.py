"""Rendering the Helm chart with the real helm binary, for the chart's tests.

helm is the one hack/build-tools.sh builds (`make tools`), found as the test ground
finds it. `helm template` needs no cluster, so these tests are unit tests.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.ground.tools import find_tools

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "kt"
NAMESPACE = "kubetune-system"


@functools.cache
def helm_binary() -> str:
    """The helm hack/build-tools.sh built (else one on PATH); the error says what to run."""
    tools = find_tools(need_control_plane=False)
    if "helm" not in tools:
        raise RuntimeError("helm is not built yet: run `make tools` (hack/build-tools.sh)")
    return str(tools["helm"])


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


@dataclass(frozen=True)
class Rendered:
    """The objects `helm template` produced, looked up by kind and name."""

    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(
        self, kind: str, name: str | None = None, namespace: str | None = None
    ) -> dict[str, Any]:
        found = [
            o
            for o in self.of_kind(kind)
            if (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)
        ]
        assert len(found) == 1, (
            f"expected one {kind} {name or ''} in {namespace or 'any namespace'}, found {len(found)}"
        )
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def operator_container(self) -> dict[str, Any]:
        (container,) = [
            c
            for c in self.deployment["spec"]["template"]["spec"]["containers"]
            if c["name"] == "operator"
        ]
        return container

    @property
    def operator_env(self) -> dict[str, str]:
        return {e["name"]: e["value"] for e in self.operator_container["env"] if "value" in e}


def template_args(
    value_files: Iterable[Path] = (),
    values: Mapping[str, Any] | None = None,
    namespace: str = NAMESPACE,
) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    for path in value_files:
        args += ["--values", str(path)]
    if values:
        # Passed as a values file, not --set, so that types (ints, lists, null) survive.
        args += ["--values", "-"]
    return args


def render(
    *value_files: Path, values: Mapping[str, Any] | None = None, namespace: str = NAMESPACE
) -> Rendered:
    result = render_raw(*value_files, values=values, namespace=namespace)
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    return Rendered([doc for doc in yaml.safe_load_all(result.stdout) if doc])


def render_raw(
    *value_files: Path, values: Mapping[str, Any] | None = None, namespace: str = NAMESPACE
) -> subprocess.CompletedProcess[str]:
    """`helm template` as is: for tests of what it refuses, and why."""
    return subprocess.run(
        [helm_binary(), *template_args(value_files, values, namespace)],
        input=yaml.safe_dump(dict(values)) if values else None,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@functools.cache
def go_tool(name: str) -> str:
    """A small Go tool from hack/tools/NAME, built on first use and cached (hack/go-tool.sh)."""
    result = subprocess.run(
        [str(ROOT / "hack" / "go-tool.sh"), name],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"hack/go-tool.sh {name} failed:\n{result.stderr}")
    return result.stdout.strip()
