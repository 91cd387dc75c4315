"""What a TuningJob and the admin's settings put into the training pod: environment,
Secrets (as references only), a Hugging Face token, a private CA bundle, labels and
annotations, scheduling defaults; and what the API and the operator refuse."""

from __future__ import annotations

import json

import pytest

from kubetune.api.contract import CA_BUNDLE_DIR, CA_BUNDLE_ENV
from kubetune.api.manifest import SpecError, parse_tuningjob
from kubetune.operator.builders import TUNINGJOB_LABEL, build_job
from kubetune.operator.settings import SettingsError, load_settings
from kubetune.operator.validation import PolicyError, validate
from tests.unit.operator_fixtures import manifest, settings, tuningjob

pytestmark = pytest.mark.unit

ENV = [
    {"name": "HTTPS_PROXY", "value": "http://proxy.corp:3128"},
    {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "token"}}},
    {
        "name": "NO_PROXY",
        "valueFrom": {"configMapKeyRef": {"name": "proxy", "key": "no-proxy", "optional": True}},
    },
]
ENV_FROM = [{"configMapRef": {"name": "tracing"}}, {"secretRef": {"name": "extra"}, "prefix": "X_"}]


def _pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def _container(job: dict) -> dict:
    (container,) = _pod(job)["containers"]
    return container


def _env(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in _container(job)["env"]}


def _problems(document: dict) -> str:
    with pytest.raises(SpecError) as caught:
        parse_tuningjob(document)
    return caught.value.render()


def test_env_and_env_from_reach_the_container_in_kubernetes_shapes() -> None:
    job = build_job(tuningjob(runtime={"env": ENV, "envFrom": ENV_FROM}), settings())
    env = _env(job)
    for entry in ENV:
        assert env[entry["name"]] == entry
    assert _container(job)["envFrom"] == ENV_FROM
    # The TuningJob's entries come after the operator's own.
    names = [e["name"] for e in _container(job)["env"]]
    assert names[-3:] == ["HTTPS_PROXY", "WANDB_API_KEY", "NO_PROXY"]


def test_gated_model_token_travels_as_a_secret_reference_only() -> None:
    job = build_job(
        tuningjob(model={"source": "hf://meta-llama/Llama-3.1-8B", "accessSecret": "hf-token"}),
        settings(),
    )
    assert _env(job)["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}},
    }
    # Every variable that comes from a Secret is a reference; no value of a Secret is
    # anywhere in the Job (the operator never reads one).
    for entry in _container(job)["env"]:
        if entry["name"] in {"HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}:
            assert set(entry) == {"name", "valueFrom"}, entry
    assert "args" not in _container(job)


def test_access_secret_applies_only_to_hub_models() -> None:
    problems = _problems(manifest(model={"source": "s3://models/x/", "accessSecret": "hf"}))
    assert "spec.model: accessSecret holds a Hugging Face token" in problems


def test_ca_bundle_is_mounted_and_named_by_aws_ca_bundle() -> None:
    job = build_job(
        tuningjob(s3={"endpoint": "https://s3.corp:9000", "caBundle": {"name": "corp-ca"}}),
        settings(),
    )
    assert _env(job)[CA_BUNDLE_ENV]["value"] == f"{CA_BUNDLE_DIR}/ca.crt"
    volume = next(v for v in _pod(job)["volumes"] if v["name"] == "s3-ca")
    assert volume["configMap"] == {
        "name": "corp-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    mount = next(m for m in _container(job)["volumeMounts"] if m["name"] == "s3-ca")
    assert mount == {"name": "s3-ca", "mountPath": CA_BUNDLE_DIR, "readOnly": True}


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ({"env": [{"name": "KUBETUNE_TUNINGJOB", "value": "{}"}]}, "is set by the operator"),
        ({"env": [{"name": "HF_TOKEN", "value": "hf_x"}]}, "spec.model.accessSecret for HF_TOKEN"),
        ({"env": [{"name": "1X", "value": "v"}]}, "spec.runtime.env[0].name"),
        (
            {
                "env": [
                    {
                        "name": "A",
                        "value": "v",
                        "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                    }
                ]
            },
            "set value or valueFrom, not both",
        ),
        (
            {"env": [{"name": "A", "valueFrom": {}}]},
            "set exactly one of secretKeyRef or configMapKeyRef",
        ),
        (
            {"envFrom": [{"secretRef": {"name": "a"}, "configMapRef": {"name": "b"}}]},
            "set exactly one of secretRef or configMapRef",
        ),
        ({"envFrom": [{"secretRef": {"name": "a"}, "prefix": "KUBETUNE_"}]}, "reserved"),
        ({"podLabels": {"kubetune.dev/tuningjob": "other"}}, "set by the operator"),
        ({"podLabels": {"team": "not a label value"}}, "not a valid label value"),
        ({"podAnnotations": {"app.kubernetes.io/name": "x"}}, "reserved"),
    ],
)
def test_environment_and_metadata_mistakes_are_refused(runtime: dict, expected: str) -> None:
    assert expected in _problems(manifest(runtime=runtime))


def test_pod_labels_and_annotations_with_admin_defaults_under_the_operators_own() -> None:
    config = settings(
        default_pod_labels={"cost-center": "ml", "team": "platform"},
        default_pod_annotations={"sidecar.istio.io/inject": "false"},
    )
    job = build_job(
        tuningjob(
            runtime={
                "podLabels": {"team": "nlp"},
                "podAnnotations": {"example.com/owner": "alice"},
            }
        ),
        config,
    )
    meta = job["spec"]["template"]["metadata"]
    assert meta["labels"]["cost-center"] == "ml" and meta["labels"]["team"] == "nlp"
    assert meta["labels"][TUNINGJOB_LABEL] == "dolly"
    assert meta["annotations"] == {
        "sidecar.istio.io/inject": "false",
        "example.com/owner": "alice",
        "kubectl.kubernetes.io/default-container": "trainer",
    }
    # The Job's own labels stay the operator's: it finds its Jobs by them.
    assert "team" not in job["metadata"]["labels"]


def test_scrape_annotations_for_prometheus_without_its_operator() -> None:
    meta = build_job(tuningjob(), settings(pod_scrape_annotations=True))["spec"]["template"][
        "metadata"
    ]
    assert meta["annotations"]["prometheus.io/scrape"] == "true"
    assert meta["annotations"]["prometheus.io/port"] == "9400"
    plain = build_job(tuningjob(), settings())["spec"]["template"]["metadata"]
    assert "prometheus.io/scrape" not in plain["annotations"]


def test_admin_defaults_for_env_node_selector_and_tolerations_reach_every_pod() -> None:
    config = settings(
        default_env=[
            {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
            {"name": "NO_PROXY", "value": ".svc"},
        ],
        default_node_selector={"team": "ml"},
        default_tolerations=[{"key": "ml-only", "operator": "Exists", "effect": "NoSchedule"}],
    )
    cpu_job = build_job(
        tuningjob(
            resources={"gpus": 0},
            runtime={"env": [{"name": "NO_PROXY", "value": ".svc,.corp"}]},
            scheduling={"nodeSelector": {"zone": "a"}},
        ),
        config,
    )
    env = _env(cpu_job)
    assert env["HTTPS_PROXY"]["value"] == "http://proxy:3128"
    assert env["NO_PROXY"]["value"] == ".svc,.corp"  # the TuningJob's own wins
    assert [e["name"] for e in _container(cpu_job)["env"]].count("NO_PROXY") == 1
    pod = _pod(cpu_job)
    assert pod["nodeSelector"] == {"team": "ml", "zone": "a"}
    assert pod["tolerations"] == [{"key": "ml-only", "operator": "Exists", "effect": "NoSchedule"}]
    gpu_pod = _pod(build_job(tuningjob(), config))
    assert {t["key"] for t in gpu_pod["tolerations"]} == {"ml-only", "nvidia.com/gpu"}


def test_settings_read_defaults_and_allowlists_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "KUBETUNE_OPERATOR_DEFAULT_ENV",
        json.dumps([{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
    )
    monkeypatch.setenv("KUBETUNE_OPERATOR_DEFAULT_POD_LABELS", '{"team": "ml"}')
    monkeypatch.setenv("KUBETUNE_OPERATOR_ALLOWED_TRAINER_IMAGES", "reg.corp/kubetune:*, x:1")
    monkeypatch.setenv("KUBETUNE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS", "trainer")
    loaded = load_settings()
    assert loaded.default_env[0].value_from.secret_key_ref.name == "s"  # type: ignore[union-attr]
    assert loaded.default_pod_labels == {"team": "ml"}
    assert loaded.allowed_trainer_images == ["reg.corp/kubetune:*", "x:1"]
    assert loaded.allowed_service_accounts == ["trainer"]
    monkeypatch.setenv("KUBETUNE_OPERATOR_DEFAULT_ENV", '[{"name": "KUBETUNE_X", "value": "1"}]')
    with pytest.raises(SettingsError, match="KUBETUNE_OPERATOR_DEFAULT_ENV"):
        load_settings()


def test_allowlists_refuse_naming_the_setting_and_let_the_rest_through() -> None:
    config = settings(
        trainer_image="reg.corp/kubetune:1.0",
        allowed_trainer_images=["reg.corp/kubetune:*"],
        allowed_service_accounts=["trainer", "team-*"],
    )
    ok = manifest(runtime={"image": "reg.corp/kubetune:1.1", "serviceAccountName": "team-a-sa"})
    assert validate(ok, config, "tj").spec.runtime.image == "reg.corp/kubetune:1.1"
    assert validate(manifest(), config, "tj")  # unset: the operator's own image
    bad = manifest(runtime={"image": "evil/miner:latest", "serviceAccountName": "admin"})
    with pytest.raises(PolicyError) as caught:
        validate(bad, config, "TuningJob team-a/dolly")
    text = caught.value.render()
    assert caught.value.reason == "NotAllowed"
    assert "spec.runtime.image: 'evil/miner:latest' is not allowed by the operator setting" in text
    assert "KUBETUNE_OPERATOR_ALLOWED_TRAINER_IMAGES" in text
    assert "operator.allowedTrainerImages" in text
    assert (
        "spec.runtime.serviceAccountName: 'admin' is not allowed by the operator setting "
        "KUBETUNE_OPERATOR_ALLOWED_SERVICE_ACCOUNTS" in text
    )
    # Without allowlists anything goes.
    assert validate(bad, settings(), "tj")


# --- rules the trainer would refuse, enforced where the spec is submitted -------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"dataset": {"source": "s3://d/x", "template": "llama-3"}}, "unknown template 'llama-3'"),
        (
            {
                "dataset": {
                    "source": "s3://d/x",
                    "validation": {"fraction": 0.5},
                    "test": {"fraction": 0.5},
                }
            },
            "validation.fraction + test.fraction is 1; it must be less than 1",
        ),
        (
            {"resources": {"gpus": 0}, "method": {"type": "lora", "computeDtype": "fp16"}},
            "method.computeDtype: fp16 needs a CUDA GPU",
        ),
        (
            {"resources": {"gpus": 0}, "training": {"optimizer": "paged-adamw-8bit"}},
            "training.optimizer: paged-adamw-8bit needs a CUDA GPU",
        ),
    ],
)
def test_trainer_rules_are_enforced_by_the_spec_model(spec: dict, expected: str) -> None:
    assert expected in _problems(manifest(**spec))


def test_template_names_match_the_trainers_builtin_templates() -> None:
    from kubetune.api.v1alpha1 import TEMPLATE_NAMES
    from kubetune.trainer.data.templates import BUILTIN

    assert set(TEMPLATE_NAMES) == {"auto", "tokenizer", *BUILTIN}
    inline = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert parse_tuningjob(manifest(dataset={"source": "s3://d/x", "template": inline}))


def test_operator_refuses_a_malformed_hub_name_before_any_job() -> None:
    with pytest.raises(SpecError, match=r"spec.model.source: write hf://ORG/NAME"):
        validate(manifest(model={"source": "hf://llama"}), settings(), "tj")
