"""The results of a run: the adapter folder, a model card, the summary, a merged model.

`<output.destination>/adapter/` holds what serving needs and what a person reads:

    adapter_model.safetensors, adapter_config.json   `PeftModel.from_pretrained(base, uri)`
    tokenizer files                                  the tokenizer the adapter was trained with
    README.md                                        model card: base, data, method, metrics
    training-summary.json                            the same, for machines

and, with `method.mergeAdapter`, `merged/` a full model with the adapter merged into
the base weights (in the compute dtype; a 4-bit base is reloaded unquantized for it).
`method.type: full` has no adapter: `<output.destination>/model/` holds the whole
trained model (model*.safetensors, config.json, tokenizer, README.md, summary), for
`AutoModelForCausalLM.from_pretrained(uri)`.

Upload order matters: a reader that sees `adapter/adapter_config.json` (or
`model/config.json`) must find a complete folder, so the result folder goes last and
that config last within it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.contract import OutputLayout
from kubetune.api.v1alpha1 import MethodSpec, TuningJob
from kubetune.trainer.storage import Storage, join_uri

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"


def write_adapter(
    model: Any, tokenizer: PreTrainedTokenizerBase, folder: Path, base_source: str
) -> Path:
    """Save adapter weights and config and the tokenizer into `folder` (replaced)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    config_path = folder / ADAPTER_CONFIG
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # The local download path means nothing elsewhere; the spec's URI does.
    config["base_model_name_or_path"] = base_source
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    tokenizer.save_pretrained(str(folder))
    return folder


def write_full_model(model: Any, tokenizer: PreTrainedTokenizerBase, folder: Path) -> Path:
    """Save a fully fine-tuned model (safetensors) and the tokenizer into `folder` (replaced)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model.config.use_cache = True  # training turned it off; serving wants it on
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    (folder / OutputLayout.TRAINING_SUMMARY).write_text(
        json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8"
    )


def write_model_card(folder: Path, job: TuningJob, summary: dict[str, Any]) -> None:
    (folder / "README.md").write_text(model_card(job, summary), encoding="utf-8")


def model_card(job: TuningJob, summary: dict[str, Any]) -> str:
    spec = job.spec
    method, training = spec.method, spec.training
    plan = summary.get("plan", {})
    metrics = summary.get("metrics", {})
    data = summary.get("data", {})
    metric_rows = "\n".join(
        f"| {name} | {_fmt(value)} |" for name, value in sorted(metrics.items())
    )
    hyper = {
        "method": spec.method.type,
        "base weights": plan.get("base_weights"),
        "compute dtype": plan.get("compute_dtype"),
        **_method_rows(method),
        "optimizer": plan.get("optimizer"),
        "learning rate": f"{_number(training.learning_rate)} ({training.lr_scheduler}, warmup {training.warmup_ratio:g})",
        "optimizer steps": summary.get("steps"),
        "epochs": _fmt(summary.get("epochs", 0.0)),
        "batch size x accumulation x processes": (
            f"{training.batch_size} x {training.gradient_accumulation} x {plan.get('world_size', 1)}"
        ),
        "max sequence length": f"{training.max_seq_length} (packing {'on' if training.packing else 'off'})",
        "loss on": training.loss_on,
        "seed": training.seed,
    }
    if method.init_adapter:
        hyper["continued from"] = method.init_adapter
    hyper_rows = "\n".join(f"| {k} | {v} |" for k, v in hyper.items())
    # QLoRA adapters were trained against the NF4-quantized base: serve them on it.
    load_kwargs = (
        ',\n    quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", '
        "bnb_4bit_use_double_quant=True)"
        if spec.method.type == "qlora"
        else ""
    )
    imports = "AutoModelForCausalLM, AutoTokenizer" + (
        ", BitsAndBytesConfig" if spec.method.type == "qlora" else ""
    )
    notes = summary.get("chosen", {}).get("notes", [])
    chosen = (
        "\nChosen from the data (`auto`, small-data rules; docs/trainer.md):\n\n"
        + "\n".join(f"- {note}" for note in notes)
        + "\n"
        if notes
        else ""
    )
    data_rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in data.items() if v is not None)
    what, library, tag = {
        "full": ("A fully fine-tuned version of", "transformers", "full-fine-tune"),
        "prompt-tuning": ("A prompt-tuning adapter (virtual tokens) for", "peft", "prompt-tuning"),
    }.get(method.type, ("A LoRA adapter for", "peft", "lora"))
    if method.type == "full":
        use = """from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")"""
    else:
        use = f"""from peft import PeftModel
from transformers import {imports}

base = AutoModelForCausalLM.from_pretrained("<the base model>"{load_kwargs})
model = PeftModel.from_pretrained(base, "<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")"""
    held_out_sources = "".join(
        f"| {split} source | {held.source} |\n"
        for split in ("validation", "test")
        if (held := getattr(spec.dataset, split)) is not None and held.source
    )
    return f"""---
library_name: {library}
base_model: {spec.model.source}
tags: [{tag}, {spec.method.type}, kubetune]
---

# {job.metadata.name}

{what} `{spec.model.source}`, trained by kubetune from the TuningJob
`{job.metadata.namespace + "/" if job.metadata.namespace else ""}{job.metadata.name}`
on `{spec.dataset.source}`.

## Use

```python
{use}
```

## Training

| setting | value |
|---|---|
{hyper_rows}
{chosen}
## Data

| | |
|---|---|
| source | {spec.dataset.source} |
{held_out_sources}| format / template | {spec.dataset.format} / {_short(spec.dataset.template)} |
{data_rows}

## Metrics

| metric | value |
|---|---|
{metric_rows}

Losses are per trained token; perplexity is exp(loss). Full curves: `metrics.jsonl`
next to this folder.

## Versions

{", ".join(f"{k} {v}" for k, v in summary.get("versions", {}).items())}
"""


def write_merged(
    adapter_folder: Path, base_folder: Path, folder: Path, compute_dtype: str, device: str
) -> Path:
    """Load the base unquantized, merge the adapter into it, save it with the tokenizer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.trainer.model import peft_without_deprecation_noise, torch_dtype

    shutil.rmtree(folder, ignore_errors=True)
    base = AutoModelForCausalLM.from_pretrained(
        str(base_folder), dtype=torch_dtype(compute_dtype), device_map={"": device}
    )
    with peft_without_deprecation_noise():
        merged = PeftModel.from_pretrained(base, str(adapter_folder)).merge_and_unload()
    merged.save_pretrained(str(folder), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(adapter_folder)).save_pretrained(str(folder))
    log.info("merged model written to %s", folder)
    return folder


def upload_results(storage: Storage, local: Path, destination: str, *, merged: Path | None) -> str:
    """Upload merged/ (if any), then the result folder with its config last; returns its URI.

    The result is adapter/ (adapter_config.json last), or model/ for a whole model
    (type full; config.json last).
    """
    if merged is not None:
        storage.upload_dir(merged, join_uri(destination, OutputLayout.MERGED))
    is_adapter = (local / ADAPTER_CONFIG).exists()
    last = ADAPTER_CONFIG if is_adapter else MODEL_CONFIG
    result_uri = join_uri(destination, OutputLayout.ADAPTER if is_adapter else OutputLayout.MODEL)
    # The config file is what makes a folder an adapter or a model (peft and
    # transformers load nothing without it): it goes first when replacing an earlier
    # export and comes back last, so the old and the new files are never visible
    # together as one result; files of the earlier export that this one lacks are
    # removed before it does.
    config_uri = join_uri(result_uri, last)
    earlier = {info.relative for info in storage.list_objects(result_uri)}
    if last in earlier:
        storage.delete(config_uri)
    staged = local.parent / (local.name + ".upload")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(local, staged, ignore=shutil.ignore_patterns(last))
    storage.upload_dir(staged, result_uri)
    fresh = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    shutil.rmtree(staged, ignore_errors=True)
    for stale in sorted(earlier - fresh - {last}):
        storage.delete(join_uri(result_uri, stale))
    storage.upload_file(local / last, config_uri)
    return result_uri


def _method_rows(method: MethodSpec) -> dict[str, Any]:
    """The model card's rows for what trained."""
    if method.type == "full":
        return {"trained weights": "all"}
    if method.type == "prompt-tuning":
        tuning = method.prompt_tuning
        init = f"text: {tuning.init_text!r}" if tuning.init == "text" else "random"
        return {"virtual tokens": tuning.virtual_tokens, "initialised": init}
    lora = method.lora
    variants = [name for name, on in (("DoRA", lora.use_dora), ("rsLoRA", lora.use_rslora)) if on]
    return {
        "LoRA r / alpha / dropout": f"{lora.r} / {lora.alpha:g} / {lora.dropout:g}",
        "target modules": ", ".join(lora.target_modules),
        "LoRA variant": ", ".join(variants) or "standard",
    }


def _number(value: Any) -> str:
    """A setting as written: numbers short (2e-04 as 0.0002), auto as auto."""
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _short(text: str) -> str:
    return text if len(text) <= 40 else "inline template"
