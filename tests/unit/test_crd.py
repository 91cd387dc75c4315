"""The CRD in crds/ is generated from the models, structural, and fully described."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.api.crd import CRD_FILE, build_crd, render_crd, spec_lock_rule

ROOT = Path(__file__).resolve().parents[2]


def test_crd_in_repo_is_up_to_date() -> None:
    committed = (ROOT / "crds" / CRD_FILE).read_text()
    assert committed == render_crd(), "crds/ is stale: run `make crds` and commit the result"


def _walk(schema: dict, path: str = ""):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def _schema() -> dict:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural_and_every_field_is_described() -> None:
    for path, node in _walk(_schema()):
        assert "$ref" not in node and "anyOf" not in node and "oneOf" not in node, path
        assert (
            "type" in node
            or node.get("x-kubernetes-preserve-unknown-fields")
            or node.get("x-kubernetes-int-or-string")
        ), path
        if path.count(".") >= 1 and not path.endswith(("[]", "{}")) and path not in (".metadata",):
            assert node.get("description"), f"{path} has no description (kubectl explain shows it)"
        if node.get("type") == "object" and "properties" in node:
            assert "additionalProperties" not in node, path


def test_only_affinity_and_number_or_auto_fields_keep_unknown_fields() -> None:
    kept = [p for p, n in _walk(_schema()) if n.get("x-kubernetes-preserve-unknown-fields")]
    # epochs and learningRate: a number (fractions allowed) or "auto", which no structural
    # type expresses; the operator's validation checks them with the typed model.
    assert kept == [
        ".spec.training.epochs",
        ".spec.training.learningRate",
        ".spec.scheduling.affinity",
    ]
    training = _schema()["properties"]["spec"]["properties"]["training"]["properties"]
    for name in ("batchSize", "gradientAccumulation"):
        assert training[name]["x-kubernetes-int-or-string"] is True


def test_strings_and_lists_are_bounded_for_cel_cost_estimation() -> None:
    for path, node in _walk(_schema()["properties"]["spec"], ".spec"):
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path


def test_defaults_are_applied_by_the_api_server() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["training"]["default"] == {}
    assert spec["training"]["properties"]["learningRate"]["default"] == "auto"
    assert spec["method"]["properties"]["lora"]["properties"]["targetModules"]["default"] == [
        "all-linear"
    ]
    validation = spec["dataset"]["properties"]["validation"]
    # null turns the split off, so null must survive defaulting
    assert validation["default"] == {"fraction": 0.05} and validation["nullable"] is True


def test_spec_lock_rule_covers_every_field_but_suspend() -> None:
    rule = spec_lock_rule()["rule"]
    spec = _schema()["properties"]["spec"]["properties"]
    for name in spec:
        assert (f"self.spec.{name} ==" in rule) is (name != "suspend"), name
    assert rule.startswith("!has(oldSelf.status) || !has(oldSelf.status.jobName)")


def test_names_columns_and_subresources() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "tuningjobs.kubetune.dev"
    assert crd["spec"]["names"]["shortNames"] == ["tj"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Progress", "Loss", "Age"]


@pytest.mark.parametrize("path", sorted((ROOT / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_crd_files_parse(path: Path) -> None:
    assert yaml.safe_load(path.read_text())["kind"] == "CustomResourceDefinition"
