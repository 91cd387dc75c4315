"""Operator settings: environment variables, checked at start-up, documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubetune.operator.settings import (
    ENV_PREFIX,
    RENAMED,
    Settings,
    SettingsError,
    load_settings,
)
from tests.support.sensitive_names import flagged_by

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().clusterwide
    monkeypatch.setenv("KUBETUNE_OPERATOR_NAMESPACES", "team-a, team-b")
    monkeypatch.setenv(
        "KUBETUNE_OPERATOR_GPU_TOLERATIONS", '[{"key": "gpu", "operator": "Exists"}]'
    )
    monkeypatch.setenv("KUBETUNE_OPERATOR_PROGRESS_INTERVAL_SECONDS", "2.5")
    config = load_settings()
    assert config.namespaces == ["team-a", "team-b"] and not config.clusterwide
    assert config.gpu_tolerations[0].key == "gpu" and config.progress_interval_seconds == 2.5


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "KUBETUNE_OPERATOR_DEFAULT_MEMORY",
            "64GB",
            "KUBETUNE_OPERATOR_DEFAULT_MEMORY: must be a positive Kubernetes quantity",
        ),
        (
            "KUBETUNE_OPERATOR_WORKERS",
            "0",
            "KUBETUNE_OPERATOR_WORKERS: Input should be greater than or equal to 1",
        ),
        (
            "KUBETUNE_OPERATOR_GPU_NODE_SELECTOR",
            "{pool: gpu}",
            "KUBETUNE_OPERATOR_GPU_NODE_SELECTOR: not valid JSON",
        ),
        (
            "KUBETUNE_OPERATOR_LEASE_DURATION_SECONDS",
            "5",
            "LEASE_RETRY_SECONDS < LEASE_RENEW_DEADLINE_SECONDS",
        ),
        ("KUBETUNE_OPERATOR_WORKER", "3", "unknown setting(s) KUBETUNE_OPERATOR_WORKER"),
    ],
)
def test_bad_settings_fail_fast_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=re.escape(expected)):
        load_settings()


def test_every_setting_is_documented_in_docs_operator_md() -> None:
    text = (ROOT / "docs" / "operator.md").read_text()
    documented = set(re.findall(r"`(KUBETUNE_OPERATOR_[A-Z0-9_]+)`", text))
    expected = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert documented == expected
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_no_setting_looks_like_a_credential_to_security_linters() -> None:
    """The Deployment's variables hold Secret names: kube-linter and polaris must not fail on them."""
    names = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    assert {name: flagged_by(name) for name in names if flagged_by(name)} == {}
    # The checker is not vacuous: it flags the old names, and the example of a
    # rename that would not have helped.
    for old in (*RENAMED, ENV_PREFIX + "S3_CREDENTIALS_SECRET_NAME"):
        assert "kube-linter env-var-secret" in flagged_by(old), old
        assert "polaris sensitiveContainerEnvVar" in flagged_by(old), old
    assert flagged_by("HF_TOKEN") and flagged_by("AZURE_STORAGE_KEY") and not flagged_by("HOME")


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED.items()))
def test_a_renamed_setting_fails_fast_giving_its_new_name(
    monkeypatch: pytest.MonkeyPatch, old: str, new: str
) -> None:
    monkeypatch.setenv(old, "team-s3")
    with pytest.raises(SettingsError, match=re.escape(f"{old} is now {new}")):
        load_settings()
    assert new.removeprefix(ENV_PREFIX).lower() in Settings.model_fields
