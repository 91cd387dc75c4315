"""Every method trains for real on a tiny model: full, prompt tuning, DoRA, rsLoRA, initAdapter.

For each: the validation loss falls, every trainable parameter changed (and, for the
adapter methods, no base weight did), and the export loads with the library a user
would load it with (transformers for a full model, peft for adapters) and computes
exactly what the trained model computed. A continued adapter starts from the given
weights; one that does not fit the base fails before training with the field's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api.manifest import parse_tuningjob
from kubetune.api.v1alpha1 import TuningJob
from kubetune.trainer import recipe
from kubetune.trainer.errors import InvalidConfigError
from kubetune.trainer.model import peft_without_deprecation_noise
from tests.support.training import manifest, save_tiny_model

OPTIONS = {"metrics_port": None}
STEPS = 8


def job(model: Path, data: Path, out: Path, **overrides: Any) -> TuningJob:
    """The tiny run of tests.support; a `method` given here replaces its method whole."""
    method = overrides.pop("method", None)
    document = manifest(str(model), str(data), str(out), **overrides)
    if method is not None:
        document["spec"]["method"] = method
    return parse_tuningjob(document)


def train(job: TuningJob, scratch: Path) -> recipe.TrainResult:
    return recipe.train(job, recipe.RunOptions(scratch=scratch, **OPTIONS))


def trainable(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def frozen(model: Any) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in names}


def trained_run(model_folder: Path, data: Path, root: Path, **overrides: Any) -> dict[str, Any]:
    """Train, keeping the model object and its trainable/frozen weights before training."""
    from kubetune.trainer import model as model_module

    kept: dict[str, Any] = {}
    original = model_module.load_model

    def spy(*args: Any, **kwargs: Any) -> Any:
        loaded = original(*args, **kwargs)
        kept.update(model=loaded, before=trainable(loaded), frozen_before=frozen(loaded))
        return loaded

    settings = {
        "maxSteps": STEPS,
        "learningRate": 1e-2,
        "evalEvery": STEPS,
        "checkpointEvery": STEPS,
        "logEvery": 4,
    }
    settings.update(overrides.pop("training", {}))
    the_job = job(model_folder, data, root / "out", training=settings, **overrides)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_module, "load_model", spy)
        result = train(the_job, root / "scratch")
    return {"result": result, "out": root / "out", "job": the_job, **kept}


def assert_learned_and_every_trainable_parameter_changed(run_: dict[str, Any]) -> None:
    metrics = run_["result"].metrics
    assert metrics["eval_loss"] < metrics["eval_loss_initial"], metrics
    after = trainable(run_["model"])
    assert after.keys() == run_["before"].keys() and after
    unchanged = [n for n, v in after.items() if torch.equal(v, run_["before"][n])]
    assert unchanged == [], unchanged


def sample_batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Classify the animal: owl"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    return {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
    }


def logits_of(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


# ---------------------------------------------------------------------------
# Full fine-tuning


def test_full_fine_tuning_trains_every_weight_and_exports_a_transformers_model(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    done = trained_run(
        tiny_model,
        synthetic_data,
        tmp_path,
        method={"type": "full"},
        training={"learningRate": 2e-3},
    )
    assert_learned_and_every_trainable_parameter_changed(done)
    model = done["model"]
    assert all(p.requires_grad for p in model.parameters())

    out = done["out"]
    assert done["result"].adapter_uri == f"{out}/model/"
    assert not (out / "adapter").exists()
    files = {p.name for p in (out / "model").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= files
    assert "adapter_config.json" not in files
    exported = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    batch = sample_batch(tokenizer)
    torch.testing.assert_close(logits_of(exported, batch), logits_of(model, batch))
    assert exported.config.use_cache is True
    card = (out / "model" / "README.md").read_text()
    assert "library_name: transformers" in card and "| trained weights | all |" in card


def test_full_fine_tuning_resumes_from_a_whole_model_checkpoint_exactly(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from kubetune.trainer.errors import Preempted
    from kubetune.trainer.loop import TrainLoop

    settings = {"maxSteps": 4, "checkpointEvery": 2, "evalEvery": 4, "learningRate": 2e-3}

    def full_job(out: Path) -> TuningJob:
        return job(tiny_model, synthetic_data, out, method={"type": "full"}, training=settings)

    train(full_job(tmp_path / "straight"), tmp_path / "s1")
    interrupted = full_job(tmp_path / "interrupted")
    original = TrainLoop._step

    def stop_in_step_4(self: TrainLoop, batches: list[dict[str, Any]]) -> Any:
        if self.progress.step + 1 == 4:
            self.stop.request("SIGTERM")
        return original(self, batches)

    with monkeypatch.context() as patch:
        patch.setattr(TrainLoop, "_step", stop_in_step_4)
        with pytest.raises(Preempted):
            train(interrupted, tmp_path / "s2")
    saved = tmp_path / "interrupted" / "checkpoints" / "step-000003"
    assert (saved / "model.safetensors").exists() and not (saved / "adapter_config.json").exists()
    resumed = train(interrupted, tmp_path / "s3")  # a new pod: weights, optimizer, RNG restored
    assert resumed.metrics["steps"] == 4
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "interrupted" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------
# Adapters: prompt tuning, DoRA, rsLoRA


ADAPTER_METHODS = {
    "prompt-tuning": (
        {"type": "prompt-tuning", "promptTuning": {"virtualTokens": 8}},
        {"packing": False, "learningRate": 3e-2},
    ),
    "prompt-tuning-text-init": (
        {
            "type": "prompt-tuning",
            "promptTuning": {
                "virtualTokens": 6,
                "init": "text",
                "initText": "Classify the animal:",
            },
        },
        {"packing": False, "learningRate": 3e-2},
    ),
    "lora-dora": ({"type": "lora", "lora": {"useDora": True}}, {}),
    "qlora-rslora": ({"type": "qlora", "lora": {"useRslora": True}}, {}),
}


@pytest.mark.parametrize("name", list(ADAPTER_METHODS))
def test_adapter_methods_learn_change_only_their_weights_and_load_with_peft(
    name: str, tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.trainer.quantization import disable_cpu_inference_repacking, four_bit_config

    method, training = ADAPTER_METHODS[name]
    done = trained_run(tiny_model, synthetic_data, tmp_path, method=method, training=training)
    assert_learned_and_every_trainable_parameter_changed(done)
    model = done["model"]
    frozen_after = frozen(model)
    changed = [k for k, v in done["frozen_before"].items() if not torch.equal(frozen_after[k], v)]
    assert changed == []

    adapter = done["out"] / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    if method["type"] == "prompt-tuning":
        assert config["peft_type"] == "PROMPT_TUNING"
        assert config["num_virtual_tokens"] == method["promptTuning"]["virtualTokens"]
        assert set(done["before"]) == {"prompt_encoder.default.embedding.weight"}
    else:
        assert config["peft_type"] == "LORA"
        assert config["use_dora"] is method["lora"].get("useDora", False)
        assert config["use_rslora"] is method["lora"].get("useRslora", False)
        if config["use_dora"]:
            assert any("lora_magnitude_vector" in n for n in done["before"])

    quantized = method["type"] == "qlora"
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model,
        **({"quantization_config": four_bit_config(torch.float32)} if quantized else {}),
        device_map={"": "cpu"},
    )
    if quantized:  # as the trainer does on CPU (bitsandbytes' repacked CPU kernel differs)
        disable_cpu_inference_repacking(base)
    with peft_without_deprecation_noise():
        loaded = PeftModel.from_pretrained(base, adapter)
    batch = sample_batch(AutoTokenizer.from_pretrained(adapter))
    torch.testing.assert_close(logits_of(loaded, batch), logits_of(model, batch))


# ---------------------------------------------------------------------------
# initAdapter


@pytest.fixture(scope="module")
def first_adapter(
    tiny_model: Path, synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("first")
    train(
        job(
            tiny_model,
            synthetic_data,
            root / "out",
            method={"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            training={"maxSteps": 4, "learningRate": 1e-2, "evalEvery": 4, "checkpointEvery": 4},
        ),
        root / "scratch",
    )
    return root / "out" / "adapter"


def test_init_adapter_continues_from_the_adapters_weights_and_shape(
    first_adapter: Path, tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    done = trained_run(
        tiny_model,
        synthetic_data,
        tmp_path,
        method={"type": "lora", "initAdapter": str(first_adapter)},
        training={"maxSteps": 4, "evalEvery": 4, "checkpointEvery": 4},
    )
    assert_learned_and_every_trainable_parameter_changed(done)
    saved = load_file(first_adapter / "adapter_model.safetensors")
    # The run started from the adapter's weights (peft names them with the adapter name).
    before = {k.replace(".default", ""): v for k, v in done["before"].items()}
    assert before.keys() == saved.keys()
    for key, value in saved.items():
        torch.testing.assert_close(before[key], value)
    config = json.loads((done["out"] / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8  # the adapter's shape, not the defaults
    card = (done["out"] / "adapter" / "README.md").read_text()
    assert f"| continued from | {first_adapter} |" in card


def test_init_adapter_in_s3_is_downloaded_and_continued(
    first_adapter: Path,
    tiny_model: Path,
    synthetic_data: Path,
    tmp_path: Path,
    s3_env: Any,
    s3_bucket: str,
) -> None:
    client = s3_env.client()
    for path in first_adapter.iterdir():
        client.upload_file(str(path), s3_bucket, f"adapters/first/{path.name}")
    the_job = job(
        tiny_model,
        synthetic_data,
        tmp_path / "out",
        method={"type": "lora", "initAdapter": f"s3://{s3_bucket}/adapters/first/"},
        training={"maxSteps": 2, "evalEvery": 2, "checkpointEvery": 2},
        s3=s3_env.spec(),
    )
    result = train(the_job, tmp_path / "scratch")
    assert result.metrics["steps"] == 2
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (
            {"type": "prompt-tuning"},
            "is a LORA adapter, but method.type prompt-tuning continues a PROMPT_TUNING adapter",
        ),
        ({"type": "lora", "lora": {"r": 16}}, "lora.r 16 vs the adapter's 4"),
    ],
    ids=["wrong-kind", "explicit-shape-differs"],
)
def test_init_adapter_that_does_not_fit_the_spec_fails_before_training(
    method: dict[str, Any],
    expected: str,
    first_adapter: Path,
    tiny_model: Path,
    synthetic_data: Path,
    tmp_path: Path,
) -> None:
    training = {"packing": False} if method["type"] == "prompt-tuning" else {}
    the_job = job(
        tiny_model,
        synthetic_data,
        tmp_path / "out",
        method={**method, "initAdapter": str(first_adapter)},
        training=training,
    )
    with pytest.raises(InvalidConfigError) as caught:
        train(the_job, tmp_path / "scratch")
    assert "spec.method.initAdapter" in str(caught.value) and expected in str(caught.value)
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_init_adapter_made_for_another_base_fails_before_training(
    first_adapter: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    other = save_tiny_model(tmp_path / "wider", hidden=96)
    the_job = job(
        other,
        synthetic_data,
        tmp_path / "out",
        method={"type": "lora", "initAdapter": str(first_adapter)},
    )
    with pytest.raises(InvalidConfigError) as caught:
        train(the_job, tmp_path / "scratch")
    message = str(caught.value)
    assert "spec.method.initAdapter: the adapter does not fit spec.model.source" in message
    assert "size mismatch" in message or "another shape" in message
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_init_adapter_that_is_not_an_adapter_folder_is_refused(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    the_job = job(
        tiny_model,
        synthetic_data,
        tmp_path / "out",
        method={"type": "lora", "initAdapter": str(tiny_model)},
    )
    with pytest.raises(
        InvalidConfigError, match=r"spec.method.initAdapter: .* is not a peft adapter folder"
    ):
        train(the_job, tmp_path / "scratch")
