"""Real QLoRA/LoRA training of tiny models, in-process: learning, export, resume, architectures."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api.manifest import parse_tuningjob
from kubetune.api.v1alpha1 import TuningJob
from kubetune.trainer import recipe
from kubetune.trainer.errors import Preempted
from kubetune.trainer.loop import TrainLoop
from kubetune.trainer.model import peft_without_deprecation_noise
from kubetune.trainer.quantization import four_bit_config
from tests.support.training import (
    ANIMALS,
    manifest,
    save_tiny_model,
    synthetic_records,
    write_records,
)

OPTIONS = {"metrics_port": None}


def job(model: Path, data: Path, out: Path, **overrides: Any) -> TuningJob:
    return parse_tuningjob(manifest(str(model), str(data), str(out), **overrides))


def train(job: TuningJob, scratch: Path, **options: Any) -> recipe.TrainResult:
    return recipe.train(job, recipe.RunOptions(scratch=scratch, **{**OPTIONS, **options}))


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def lora_weights(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def base_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


LEARNING_STEPS = 40
LEARNING_FACTOR = 10  # validation loss must fall at least this many times


@pytest.fixture(scope="module")
def learned(
    tiny_model: Path, synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One QLoRA run on the synthetic task, with the model object kept for inspection."""
    root = tmp_path_factory.mktemp("learned")
    test_split = write_records(root / "test.jsonl", synthetic_records(24, seed=99))
    the_job = job(
        tiny_model,
        synthetic_data,
        root / "out",
        dataset={"test": {"source": str(test_split)}},
        training={
            "evalExactMatch": True,
            "maxSteps": LEARNING_STEPS,
            "learningRate": 1e-2,
            "batchSize": 4,
            "gradientAccumulation": 1,
            "warmupRatio": 0.1,
            "evalEvery": 10,
            "checkpointEvery": 20,
            "logEvery": 5,
        },
    )
    kept: dict[str, Any] = {}
    from kubetune.trainer import model as model_module

    original = model_module.load_model

    def spy(*args: Any, **kwargs: Any) -> Any:
        loaded = original(*args, **kwargs)
        kept["initial_lora"] = lora_weights(loaded)
        kept["initial_base"] = base_state(loaded)
        kept["model"] = loaded
        return loaded

    patch = pytest.MonkeyPatch()
    patch.setattr(model_module, "load_model", spy)
    logged = LogLines()
    logger = logging.getLogger("kubetune")
    level = logger.level
    # setLevel, not the attribute: it also clears the loggers' cached isEnabledFor answers.
    logger.setLevel(logging.INFO)
    logger.addHandler(logged)
    try:
        result = train(the_job, root / "scratch")
    finally:
        logger.removeHandler(logged)
        logger.setLevel(level)
        patch.undo()
    return {"result": result, "out": root / "out", "job": the_job, "log": logged.lines, **kept}


class LogLines(logging.Handler):
    """Keeps the trainer's log messages (a module-scoped fixture has no caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_validation_loss_falls_by_the_stated_factor(learned: dict[str, Any]) -> None:
    metrics = learned["result"].metrics
    assert metrics["steps"] == LEARNING_STEPS
    assert metrics["eval_loss_initial"] / metrics["eval_loss"] >= LEARNING_FACTOR, metrics
    evaluations = [r for r in records(learned["out"] / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evaluations] == [0, 10, 20, 30, 40]
    losses = [r["eval_loss"] for r in evaluations]
    assert losses == sorted(losses, reverse=True), losses


def test_the_test_split_is_evaluated_at_the_end_with_exact_match(learned: dict[str, Any]) -> None:
    metrics = learned["result"].metrics
    assert metrics["test_loss"] < metrics["eval_loss_initial"] / LEARNING_FACTOR
    assert metrics["test_perplexity"] == pytest.approx(math.exp(metrics["test_loss"]))
    assert metrics["test_exact_match_examples"] == 24
    assert metrics["test_exact_match"] >= 0.8, metrics
    test_records = [r for r in records(learned["out"] / "metrics.jsonl") if r["kind"] == "test"]
    assert len(test_records) == 1 and test_records[0]["step"] == LEARNING_STEPS


def test_every_trainable_parameter_changed_and_no_base_weight_did(learned: dict[str, Any]) -> None:
    model = learned["model"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(learned["initial_lora"]) and trainable
    after = lora_weights(model)
    unchanged = [n for n in trainable if torch.equal(after[n], learned["initial_lora"][n])]
    assert unchanged == []
    base_after = base_state(model)
    assert base_after.keys() == learned["initial_base"].keys()
    changed = [k for k, v in learned["initial_base"].items() if not torch.equal(base_after[k], v)]
    assert changed == []
    assert any(
        ".weight" in k and base_after[k].dtype == torch.uint8 for k in base_after
    )  # 4-bit NF4 base


def generate(model: Any, tokenizer: Any, animal: str) -> str:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Classify the animal: {animal}"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=16, do_sample=False)
    return tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True).strip()


def test_the_exported_adapter_loads_with_peft_and_answers_in_the_taught_format(
    learned: dict[str, Any], tiny_model: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = learned["out"] / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(adapter)

    def base_model() -> Any:  # 4-bit, as trained (QLoRA adapters are served on the quantized base)
        return AutoModelForCausalLM.from_pretrained(
            tiny_model, quantization_config=four_bit_config(torch.float32), device_map={"": "cpu"}
        )

    before = {animal: generate(base_model(), tokenizer, animal) for animal in ANIMALS}
    with peft_without_deprecation_noise():
        tuned = PeftModel.from_pretrained(base_model(), adapter).eval()
    after = {animal: generate(tuned, tokenizer, animal) for animal in ANIMALS}

    taught = re.compile(r"^Answer: (\w+) is a (mammal|bird)\.$")
    assert not any(taught.match(text) for text in before.values()), before
    assert all(taught.match(text) for text in after.values()), after
    correct = sum(after[a] == f"Answer: {a} is a {c}." for a, c in ANIMALS.items())
    assert correct >= len(ANIMALS) - 1, after


def test_the_output_holds_card_summary_metrics_and_the_final_checkpoint(
    learned: dict[str, Any],
) -> None:
    out, result = learned["out"], learned["result"]
    assert result.adapter_uri == f"{out}/adapter/"
    assert result.checkpoint_uri == f"{out}/checkpoints/step-{LEARNING_STEPS:06d}/"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000020", "step-000040"]
    summary = json.loads((out / "adapter" / "training-summary.json").read_text())
    assert summary["steps"] == LEARNING_STEPS and summary["plan"]["base_weights"] == "nf4"
    assert summary["metrics"]["eval_loss"] == pytest.approx(result.metrics["eval_loss"])
    card = (out / "adapter" / "README.md").read_text()
    for expected in (
        "base_model: " + learned["job"].spec.model.source,
        "| method | qlora |",
        "eval_loss",
        "PeftModel.from_pretrained",
    ):
        assert expected in card
    # The data figures are the training split's, each held-out split's apart (a test
    # source here, a validation fraction of the training source).
    splits = json.loads((out / "prepare-report.json").read_text())["splits"]
    assert set(splits) == {"train", "validation", "test"}
    for split, figures in splits.items():
        for name, key in (("examples", "examples"), ("rows", "rows"), ("tokens", "tokens")):
            assert summary["data"][f"{split} {name}"] == figures[key]
            assert f"| {split} {name} | {figures[key]} |" in card
        assert summary["data"][f"{split} trained tokens"] == figures["trainedTokens"]
    assert "examples" not in summary["data"]
    # The log says how many examples, and in how many packed rows.
    train = splits["train"]
    (started,) = [line for line in learned["log"] if line.startswith("training: ")]
    assert started.startswith(
        f"training: {train['examples']} examples in {train['rows']} packed rows, "
    ), started
    train_records = [r for r in records(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == list(range(5, LEARNING_STEPS + 1, 5))
    assert all(r["tokens_per_second"] > 0 and r["learning_rate"] >= 0 for r in train_records)


# ---------------------------------------------------------------------------
# Resume


def stop_at(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ask for a stop (as SIGTERM does) in the middle of optimizer step `step`."""
    original = TrainLoop._step

    def step_then_stop(self: TrainLoop, batches: list[dict[str, Any]]) -> Any:
        if self.progress.step + 1 == step:
            self.stop.request("SIGTERM")
        return original(self, batches)

    monkeypatch.setattr(TrainLoop, "_step", step_then_stop)


def test_a_stopped_run_resumes_to_the_same_adapter_as_an_uninterrupted_one(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = {
        "method": {"lora": {"dropout": 0.1}},  # resume must restore the dropout RNG too
        "training": {
            "maxSteps": 7,
            "checkpointEvery": 2,
            "evalEvery": 3,
            "logEvery": 1,
            "gradientAccumulation": 2,
        },
    }
    train(job(tiny_model, synthetic_data, tmp_path / "straight", **overrides), tmp_path / "s1")

    interrupted = job(tiny_model, synthetic_data, tmp_path / "interrupted", **overrides)
    with monkeypatch.context() as patch:
        stop_at(6, patch)  # steps 1-5 done, checkpoints at 2 and 4; stop mid-step 6
        with pytest.raises(Preempted) as caught:
            train(interrupted, tmp_path / "s2")
    assert caught.value.checkpoint == f"{tmp_path}/interrupted/checkpoints/step-000005/"  # type: ignore[attr-defined]
    resumed = train(interrupted, tmp_path / "s3")  # a new pod: fresh scratch

    assert resumed.metrics["steps"] == 7
    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "interrupted" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=name)
    steps = [(r["kind"], r["step"]) for r in records(tmp_path / "interrupted" / "metrics.jsonl")]
    assert steps == [
        (r["kind"], r["step"]) for r in records(tmp_path / "straight" / "metrics.jsonl")
    ]


def test_a_finished_run_started_again_only_exports_again(
    tiny_model: Path, synthetic_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    the_job = job(
        tiny_model, synthetic_data, tmp_path / "out", training={"maxSteps": 2, "checkpointEvery": 5}
    )
    first = train(the_job, tmp_path / "scratch")
    calls = {"steps": 0}
    original = TrainLoop._step

    def counting(self: TrainLoop, batches: list[dict[str, Any]]) -> Any:
        calls["steps"] += 1
        return original(self, batches)

    monkeypatch.setattr(TrainLoop, "_step", counting)
    again = train(the_job, tmp_path / "scratch")
    assert calls["steps"] == 0
    assert again.metrics["steps"] == first.metrics["steps"] == 2
    assert again.checkpoint_uri == first.checkpoint_uri


# ---------------------------------------------------------------------------
# Architectures and methods


@pytest.mark.parametrize(
    ("arch", "method", "training"),
    [
        (
            "qwen2",
            {"type": "lora", "baseWeights": "bf16", "computeDtype": "bf16"},
            {"packing": False},
        ),
        ("mistral", {"type": "lora", "baseWeights": "int8", "gradientCheckpointing": False}, {}),
        (
            "llama",
            {
                "type": "qlora",
                "lora": {"targetModules": ["q_proj", "v_proj"]},
                "mergeAdapter": True,
            },
            {},
        ),
    ],
    ids=["qwen2-lora-bf16-padded", "mistral-lora-int8", "llama-qlora-qv-merged"],
)
def test_architectures_and_methods_train_and_export(
    arch: str,
    method: dict[str, Any],
    training: dict[str, Any],
    synthetic_data: Path,
    tmp_path: Path,
) -> None:
    model = save_tiny_model(tmp_path / arch, arch)
    the_job = job(
        model,
        synthetic_data,
        tmp_path / "out",
        method=method,
        training={
            "maxSteps": 6,
            "learningRate": 1e-2,
            "evalEvery": 6,
            "checkpointEvery": 6,
            **training,
        },
    )
    result = train(the_job, tmp_path / "scratch")
    assert result.metrics["eval_loss"] < result.metrics["eval_loss_initial"]
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    targets = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    if "targetModules" in method.get("lora", {}):
        assert targets == {"q_proj", "v_proj"}
    else:
        assert {
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        } <= targets
    if method.get("mergeAdapter"):
        from transformers import AutoModelForCausalLM

        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
        assert not any("lora" in name for name, _ in merged.named_parameters())
