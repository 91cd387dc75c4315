"""kubeconform, strict, over Kubernetes objects: the chart's, the operator's Jobs, the examples.

- kubeconform is built from the Go module proxy by hack/go-tool.sh (`make tools`).
- The schemas of the built-in kinds come from the PyPI package kubernetes-validate,
  prepared by hack/k8s-schemas.sh (`make tools`): one folder per Kubernetes version,
  the strict variant (no field the API does not know).
- The TuningJob's schema is made here from the CRD's openAPIV3Schema (`crd_json_schema`),
  so it is always the CRD of this checkout. What a JSON schema cannot say is left to the
  API server: the CEL rules (x-kubernetes-validations) and list-map keys.

Nothing is skipped quietly: an object whose kind has no schema is an error, except the
kinds named in SKIPPED_KINDS, which the tests assert were the only ones skipped.
"""

from __future__ import annotations

import functools
import json
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.unit.chart_support import ROOT, go_tool

# The chart's minimum (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
# prometheus-operator's kinds (the chart's PodMonitor, ServiceMonitor and PrometheusRule):
# no package from a registry reachable here ships their schemas;
# tests/unit/test_chart_render.py checks the monitors' selectors and ports against the
# objects they point at, and the rules' expressions against the metrics that exist.
SKIPPED_KINDS = ("PodMonitor", "ServiceMonitor", "PrometheusRule")
CRDS = sorted((ROOT / "crds").glob("*.yaml"))
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@functools.cache
def builtin_schemas() -> Path:
    """The folder hack/k8s-schemas.sh prepared (first use: fetched with uv, seconds)."""
    result = subprocess.run(
        [str(ROOT / "hack" / "k8s-schemas.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"hack/k8s-schemas.sh failed (run `make tools`):\n{result.stderr}")
    return Path(result.stdout.strip())


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """One node of a structural OpenAPI v3 schema as JSON Schema 2020-12, strict like the API server.

    `nullable` becomes a "null" type; boolean exclusive bounds become numbers; an object with properties allows no others unless
    it preserves unknown fields (the API server prunes or, with strict field validation,
    rejects them); Kubernetes' x- extensions are dropped.
    """
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(child) for child in value]
        else:
            out[key] = value
    # OpenAPI 3.0 (draft 4) marks a bound exclusive with a boolean; JSON Schema 2020-12
    # gives the exclusive bound itself.
    for bound, exclusive in (("maximum", "exclusiveMaximum"), ("minimum", "exclusiveMinimum")):
        if out.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
        elif out.get(exclusive) is False:
            del out[exclusive]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if node.get("x-kubernetes-int-or-string"):
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_json_schema(crd: dict[str, Any], version: dict[str, Any], definitions: Path) -> dict:
    """The JSON schema of one served version of `crd`, its metadata checked as ObjectMeta."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schema = to_json_schema(version["schema"]["openAPIV3Schema"])
    properties = schema.setdefault("properties", {})
    properties["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
    properties["kind"] = {"type": "string", "enum": [kind]}
    properties["metadata"] = {"$ref": f"{definitions.as_uri()}#/$defs/{OBJECT_META}"}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_file_name(api_version: str, kind: str) -> str:
    """The name kubeconform's {{ .ResourceKind }}{{ .KindSuffix }}.json gives a kind's schema."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


@functools.cache
def crd_schemas() -> Path:
    """<folder>/v<kubernetes version>/<kind>-<group>-<version>.json for this checkout's CRDs."""
    folder = Path(tempfile.mkdtemp(prefix="kubetune-crd-schemas-"))
    for k8s_version in KUBERNETES_VERSIONS:
        target = folder / f"v{k8s_version}"
        target.mkdir()
        definitions = builtin_schemas() / f"v{k8s_version}-local-strict" / "_definitions.json"
        for path in CRDS:
            crd = yaml.safe_load(path.read_text())
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                name = schema_file_name(f"{group}/{version['name']}", kind)
                schema = crd_json_schema(crd, version, definitions)
                # kubeconform takes a schema it cannot compile for a missing one: say why here.
                jsonschema.Draft202012Validator.check_schema(schema)
                (target / name).write_text(json.dumps(schema, indent=1))
    return folder


def kubeconform(files: Iterable[Path], k8s_version: str) -> list[dict[str, Any]]:
    """kubeconform -strict over `files`: one result per object (status, kind, name, msg)."""
    args = [
        go_tool("kubeconform"),
        "-strict",
        "-output",
        "json",
        "-verbose",
        "-kubernetes-version",
        k8s_version,
        "-schema-location",
        f"{builtin_schemas()}/{{{{ .NormalizedKubernetesVersion }}}}-local{{{{ .StrictSuffix }}}}"
        "/{{ .ResourceKind }}{{ .KindSuffix }}.json",
        "-schema-location",
        f"{crd_schemas()}/{{{{ .NormalizedKubernetesVersion }}}}"
        "/{{ .ResourceKind }}{{ .KindSuffix }}.json",
        "-skip",
        ",".join(SKIPPED_KINDS),
        *map(str, files),
    ]
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)
    try:
        resources = json.loads(result.stdout)["resources"]
    except (json.JSONDecodeError, KeyError):
        raise AssertionError(
            f"kubeconform gave no JSON report (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        ) from None
    # An empty document (a template that renders only a comment) has no status at all.
    return [r for r in resources if r["status"] or r["kind"]]


def problems(results: list[dict[str, Any]]) -> list[str]:
    """Every object kubeconform did not find valid (skipped kinds aside), with its message."""
    return [
        f"{r['filename']}: {r['kind']} {r['name']}: {r['status']} {r.get('msg', '')}"
        for r in results
        if r["status"] != "statusValid"
        and not (r["status"] == "statusSkipped" and r["kind"] in SKIPPED_KINDS)
    ]
