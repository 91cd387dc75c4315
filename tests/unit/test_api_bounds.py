"""Spec bounds that used to fail late (in the pod) or leak: refused by the model and the CRD.

The API server's side (CEL and OpenAPI) runs in tests/integration/test_operator.py
(test_api_server_rejects_bad_manifests); here the model, the CRD text and the
manifest reader.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from pydantic import ValidationError

from kubetune.api.crd import build_crd
from kubetune.api.locations import pvc_local_path
from kubetune.api.manifest import SpecError, parse_tuningjob_text
from kubetune.api.v1alpha1 import ModelSpec, S3Spec, SchedulingSpec, TrainingSpec
from kubetune.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _spec_schema() -> dict:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_seed_is_bounded_to_what_numpy_accepts():
    assert TrainingSpec(seed=2**32 - 1).seed == 2**32 - 1
    with pytest.raises(ValidationError, match="less than or equal to 4294967295"):
        TrainingSpec(seed=2**32)
    assert _spec_schema()["properties"]["training"]["properties"]["seed"]["maximum"] == 2**32 - 1


@pytest.mark.parametrize("name", ["team-a", "q.1", "A_b", "x" * 63])
def test_queue_names_that_are_label_values_are_accepted(name):
    assert SchedulingSpec(queue_name=name).queue_name == name


@pytest.mark.parametrize("name", ["team a", "-q", "q-", "a/b", "x" * 64])
def test_queue_names_that_are_not_label_values_are_refused(name):
    with pytest.raises(ValidationError):
        SchedulingSpec(queue_name=name)
    schema = _spec_schema()["properties"]["scheduling"]["properties"]["queueName"]
    # The CRD's pattern and length (what the API server checks) refuse it too.
    assert len(name) > schema["maxLength"] or not re.match(schema["pattern"], name)


def _cel_regex(schema: dict) -> str:
    (rule,) = schema["x-kubernetes-validations"]
    return re.search(r"matches\('(.*)'\)", rule["rule"]).group(1)


@pytest.mark.parametrize(
    "source, escapes",
    [
        ("pvc://models/llama/", False),
        ("pvc://models/a..b/c", False),
        ("pvc://models/../other", True),
        ("pvc://models/x/..", True),
        ("s3://bucket/../x", False),  # not a mount: S3 keys may hold anything
    ],
)
def test_pvc_paths_may_not_escape_the_claim(source, escapes):
    regex = _cel_regex(_spec_schema()["properties"]["model"]["properties"]["source"])
    assert (source.startswith("pvc://") and bool(re.search(regex, source))) == escapes
    if escapes:
        with pytest.raises(ValidationError, match=r"'\.\.' segments"):
            ModelSpec(source=source)
        with pytest.raises(ValueError, match=r"'\.\.' segments"):
            pvc_local_path(source)
    else:
        assert ModelSpec(source=source).source == source


@pytest.mark.parametrize(
    "endpoint, has_credentials",
    [
        ("http://seaweedfs:8333", False),
        ("https://s3.example.com/path@x", False),
        ("https://AKIA:secret@s3.example.com", True),
        ("http://user@host:9000", True),
    ],
)
def test_s3_endpoints_with_credentials_are_refused(endpoint, has_credentials):
    regex = _cel_regex(_spec_schema()["properties"]["s3"]["properties"]["endpoint"])
    assert bool(re.search(regex, endpoint)) == has_credentials
    if has_credentials:
        with pytest.raises(ValidationError, match="may not hold credentials"):
            S3Spec(endpoint=endpoint)
    else:
        assert S3Spec(endpoint=endpoint).endpoint == endpoint


ALIASED = """\
apiVersion: kubetune.dev/v1alpha1
kind: TuningJob
metadata: {name: laughs}
spec:
  model: {source: s3://m/x/}
  dataset: {source: s3://d/x.jsonl}
  output: {destination: s3://o/x/}
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]
"""


def test_the_refusal_of_an_endpoint_with_credentials_does_not_echo_them(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        (ROOT / "examples" / "dolly-qlora.yaml")
        .read_text()
        .replace("http://minio.storage:9000", "https://AKIA:supersecret@s3.example.com")
    )
    result = CliRunner().invoke(main, ["render", "-f", str(path)])
    assert result.exit_code == 78 and "spec.s3.endpoint: the endpoint URL may not" in result.output
    assert "supersecret" not in result.output


def test_yaml_aliases_are_refused_with_their_line():
    with pytest.raises(
        SpecError, match=r"job\.yaml:9: not valid YAML: YAML aliases are not accepted \(\*a\)"
    ):
        parse_tuningjob_text(ALIASED, "job.yaml")


def test_render_refuses_an_aliased_manifest_before_expanding_it(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(ALIASED)
    result = CliRunner().invoke(main, ["render", "-f", str(path)])
    assert result.exit_code == 78
    assert "YAML aliases are not accepted" in result.output
    assert len(result.output) < 1000  # the message, not an expanded document


def test_anchors_without_aliases_still_parse():
    text = (ROOT / "examples" / "dolly-qlora.yaml").read_text()
    anchored = text.replace("kind: TuningJob", "kind: &k TuningJob", 1)
    assert yaml.safe_load_all(anchored)
    assert parse_tuningjob_text(anchored, "x.yaml").metadata.name == "dolly-llama-qlora"
