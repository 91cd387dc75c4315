"""The facts both the operator and the trainer rely on, each defined once in kubetune.api."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from kubernetes.utils import parse_quantity as kubernetes_parse_quantity

from kubetune.api.locations import (
    hf_repo,
    local_path,
    location_kind,
    pvc_claim,
    pvc_local_path,
)
from kubetune.api.quantity import check_positive_quantity, parse_quantity
from kubetune.api.timestamps import micro_time, parse_rfc3339, rfc3339
from kubetune.api.trainer_metrics import PREFIX, TRAINER_PHASES, TrainerMetric

QUANTITIES = [
    "64Gi", "500m", "1e3", "1E3", "8", "0.5Gi", "+1", ".5", "1k", "2Ei", "5Ei", "1n", "1u",
    "1.", "-1", "1.5e-3", "0", "1E", "10E", "00.1", "1e-3", "-5Gi", "1.5E+2", "7Pi", "3T",
]  # fmt: skip


@pytest.mark.parametrize("text", QUANTITIES)
def test_quantities_have_the_value_kubernetes_gives_them(text: str) -> None:
    assert parse_quantity(text) == kubernetes_parse_quantity(text)


@pytest.mark.parametrize("text", ["", "abc", "1e", "Gi", "1 Gi", "1GiB", "1.2.3"])
def test_what_is_not_a_quantity_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_quantity(text)


@pytest.mark.parametrize(
    ("text", "positive"),
    [("64Gi", True), ("0.5", True), ("1e3", True), ("0", False), ("0Gi", False),
     ("0e5", False), ("-1", False), ("x", False)],
)  # fmt: skip
def test_the_spec_accepts_only_positive_quantities(text: str, positive: bool) -> None:
    if positive:
        assert check_positive_quantity(text) == text
        assert parse_quantity(text) > Decimal(0)
    else:
        with pytest.raises(ValueError, match="positive Kubernetes quantity"):
            check_positive_quantity(text)


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("s3://bucket/prefix/", "s3"),
        ("pvc://models/llama", "pvc"),
        ("hf://org/name", "hf"),
        ("file:///data/x.jsonl", "local"),
        ("/data/x.jsonl", "local"),
        ("relative/folder", "local"),
        ("gs://bucket/x", "unsupported"),
        ("https://example.com/x", "unsupported"),
    ],
)
def test_every_uri_has_one_kind(uri: str, kind: str) -> None:
    assert location_kind(uri) == kind


def test_location_parts() -> None:
    assert hf_repo("hf://org/name/") == "org/name"
    assert local_path("file:///data/x") == "/data/x"
    assert pvc_claim("pvc://models/llama/8b") == "models"
    assert pvc_claim("pvc:///x") is None and pvc_claim("s3://b/k") is None
    assert pvc_local_path("pvc://models/llama/8b/") == "/mnt/pvc/models/llama/8b"
    with pytest.raises(ValueError):
        pvc_local_path("s3://b/k")


def test_timestamps_are_rfc3339_in_utc() -> None:
    epoch = 1767229200.1234567
    assert rfc3339(epoch) == "2026-01-01T01:00:00Z"
    assert rfc3339(epoch, digits=3) == "2026-01-01T01:00:00.123Z"
    assert micro_time(epoch) == "2026-01-01T01:00:00.123457Z"
    assert parse_rfc3339("2026-01-01T01:00:00Z") == 1767229200.0
    assert parse_rfc3339(micro_time(epoch)) == pytest.approx(epoch, abs=1e-6)
    assert parse_rfc3339("2026-01-01T02:00:00+01:00") == 1767229200.0


def test_metric_names_share_the_prefix_and_are_prometheus_names() -> None:
    names = [v for k, v in vars(TrainerMetric).items() if k.isupper()]
    assert len(names) == len(set(names)) == 13
    assert all(re.fullmatch(r"kubetune_trainer_[a-z0-9_]+", name) for name in names)
    assert all(name.startswith(PREFIX) for name in names)
    assert TRAINER_PHASES[0] == "downloading" and TRAINER_PHASES[-1] == "uploading"
