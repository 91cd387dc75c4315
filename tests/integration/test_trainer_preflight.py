"""Bad input fails before any training, with an error that says what and where."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.manifest import parse_tuningjob
from kubetune.trainer import recipe
from kubetune.trainer.errors import InvalidConfigError, StorageAccessError
from kubetune.trainer.loop import TrainLoop
from kubetune.trainer.model_source import PVC_MOUNT_ROOT_ENV, fetch_model
from kubetune.trainer.storage import Storage
from tests.support.training import manifest


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: TrainLoop, batches: list[dict[str, Any]]) -> Any:
        raise AssertionError("a training step ran although the input was bad")

    monkeypatch.setattr(TrainLoop, "_step", refuse)


def attempt(model: str | Path, data: Path, out: Path, scratch: Path, **overrides: Any) -> None:
    job = parse_tuningjob(manifest(str(model), str(data), str(out), **overrides))
    recipe.train(job, recipe.RunOptions(scratch=scratch, metrics_port=None))


def copy_model(tiny_model: Path, to: Path, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(tiny_model, to, ignore=shutil.ignore_patterns(*without))
    return to


@pytest.mark.usefixtures("no_training")
def test_a_model_folder_without_weights(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    model = copy_model(tiny_model, tmp_path / "model", without=("*.safetensors",))
    with pytest.raises(
        InvalidConfigError,
        match=r"spec.model.source: .* has a config.json but no weights .*found: .*config.json",
    ):
        attempt(model, synthetic_data, tmp_path / "out", tmp_path / "scratch")
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.usefixtures("no_training")
def test_a_model_folder_without_config(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    model = copy_model(tiny_model, tmp_path / "model", without=("config.json",))
    with pytest.raises(InvalidConfigError, match=r"has no config\.json"):
        attempt(model, synthetic_data, tmp_path / "out", tmp_path / "scratch")


@pytest.mark.usefixtures("no_training")
def test_a_tokenizer_that_cannot_pad_padded_batches(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    model = copy_model(tiny_model, tmp_path / "model")
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for key in ("pad_token", "eos_token"):
        config.pop(key, None)
    config_path.write_text(json.dumps(config))
    with pytest.raises(InvalidConfigError, match="neither a pad token nor an EOS token"):
        attempt(
            model,
            synthetic_data,
            tmp_path / "out",
            tmp_path / "scratch",
            training={"packing": False},
        )


@pytest.mark.usefixtures("no_training")
def test_an_output_that_cannot_be_written(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageAccessError, match="a-file"):
        attempt(tiny_model, synthetic_data, blocker / "out", tmp_path / "scratch")


@pytest.mark.usefixtures("no_training")
def test_target_modules_the_model_does_not_have(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        InvalidConfigError, match=r"targetModules: \['query_key_value'\] matches no layer .* q_proj"
    ):
        attempt(
            tiny_model,
            synthetic_data,
            tmp_path / "out",
            tmp_path / "scratch",
            method={"lora": {"targetModules": ["query_key_value"]}},
        )


@pytest.mark.usefixtures("no_training")
def test_an_unreachable_hub(
    synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        StorageAccessError,
        match=r"hf://org/model: the Hugging Face hub is not reachable .* mirror the model to S3",
    ):
        attempt("hf://org/model", synthetic_data, tmp_path / "out", tmp_path / "scratch")


def test_pvc_sources_resolve_under_the_mount_root(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.api.v1alpha1 import ModelSpec

    monkeypatch.setenv(PVC_MOUNT_ROOT_ENV, str(tmp_path))
    copy_model(tiny_model, tmp_path / "models-claim" / "tiny")
    assert (
        fetch_model(ModelSpec(source="pvc://models-claim/tiny"), Storage(), tmp_path)
        == tmp_path / "models-claim" / "tiny"
    )
    with pytest.raises(InvalidConfigError, match=r"the claim 'other' is mounted at .*other"):
        fetch_model(ModelSpec(source="pvc://other/tiny"), Storage(), tmp_path)


def test_unsupported_model_schemes(tmp_path: Path) -> None:
    from kubetune.api.v1alpha1 import ModelSpec

    with pytest.raises(InvalidConfigError, match="unsupported scheme"):
        fetch_model(ModelSpec(source="gs://bucket/model/"), Storage(), tmp_path)


@pytest.mark.usefixtures("no_training")
def test_a_tokenizer_without_the_chat_template_the_spec_insists_on(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    model = copy_model(tiny_model, tmp_path / "model", without=("chat_template.jinja",))
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    with pytest.raises(InvalidConfigError, match="template"):
        attempt(
            model,
            synthetic_data,
            tmp_path / "out",
            tmp_path / "scratch",
            dataset={"template": "tokenizer"},
        )
