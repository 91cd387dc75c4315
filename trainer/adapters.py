"""`method.initAdapter`: continue training from an existing peft adapter.

`fetch_init_adapter` brings the adapter folder (s3://, or a local folder for
`kubetune train` on a workstation) onto the scratch volume; `load_init_adapter` puts it on the base model, trainable, after checking that
it fits, so a wrong adapter fails in the loading phase with a message that names
`spec.method.initAdapter`, never half-way through training:

- the folder holds a peft adapter (adapter_config.json, adapter weights);
- its kind fits `method.type` (LoRA for qlora/lora, prompt tuning for prompt-tuning);
- the shape fields the spec sets explicitly (lora r, alpha, dropout, targetModules,
  useDora, useRslora; promptTuning.virtualTokens) agree with the adapter's own. Fields
  the spec leaves at their defaults take the adapter's values: its shape is what it is;
- its weights fit this base model exactly: every tensor in the file has a place of the
  same shape in the model, and every adapter tensor of the model is in the file. A
  different base (other hidden size, vocabulary, layer count or module names) fails
  here, whatever name the adapter records; the recorded base
  (`base_model_name_or_path`) differing from `spec.model.source` alone is only logged,
  because the same weights are often reached through different URIs (an s3:// copy
  here, a pvc:// mount there).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.locations import as_prefix, local_path, location_kind
from kubetune.api.v1alpha1 import MethodSpec
from kubetune.trainer.errors import InvalidConfigError

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

    from kubetune.trainer.storage import Storage

log = logging.getLogger(__name__)

FIELD = "spec.method.initAdapter"
CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")

# peft_type each method continues from.
PEFT_TYPES = {"qlora": "LORA", "lora": "LORA", "prompt-tuning": "PROMPT_TUNING"}

# Spec fields (snake_case, as in the API model) ↔ peft config keys they must agree with.
LORA_FIELDS = {
    "r": "r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "target_modules": "target_modules",
    "use_dora": "use_dora",
    "use_rslora": "use_rslora",
}


def fetch_init_adapter(uri: str, storage: Storage, scratch: Path) -> Path:
    """The local folder holding the adapter at `uri` (downloaded to scratch for s3://)."""
    kind = location_kind(uri)
    if kind == "s3":
        folder = scratch / "init-adapter" / hashlib.sha256(uri.encode()).hexdigest()[:12]
        storage.download_prefix(as_prefix(uri), folder)
    elif kind == "local":
        folder = Path(local_path(uri)).expanduser()
    else:
        raise InvalidConfigError(
            f"{FIELD}: '{uri}' is not supported here; give an s3://bucket/prefix/ (or a local "
            "folder for `kubetune train` on a workstation)"
        )
    read_adapter_config(folder, uri)  # fail now if it is not an adapter
    return folder


def read_adapter_config(folder: Path, uri: str) -> dict[str, Any]:
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if CONFIG not in present or not any(name in present for name in WEIGHTS):
        raise InvalidConfigError(
            f"{FIELD}: {uri} is not a peft adapter folder (it needs {CONFIG} and "
            f"adapter_model.safetensors; found: {', '.join(present[:20]) or 'nothing'}); point it "
            "at an adapter, such as an earlier run's <output.destination>/adapter/"
        )
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except ValueError as e:
        raise InvalidConfigError(f"{FIELD}: {uri}/{CONFIG} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise InvalidConfigError(f"{FIELD}: {uri}/{CONFIG} is not a JSON object")
    return config


def check_adapter_config(config: dict[str, Any], method: MethodSpec, uri: str) -> None:
    """The adapter's kind fits method.type; explicitly set shape fields agree with it."""
    kind = config.get("peft_type")
    wanted = PEFT_TYPES[method.type]
    if kind != wanted:
        raise InvalidConfigError(
            f"{FIELD}: {uri} is a {kind} adapter, but method.type {method.type} continues a "
            f"{wanted} adapter; set method.type to match the adapter, or start without initAdapter"
        )
    conflicts = []
    if method.type == "prompt-tuning":
        tuning = method.prompt_tuning
        if "virtual_tokens" in tuning.model_fields_set and tuning.virtual_tokens != config.get(
            "num_virtual_tokens"
        ):
            conflicts.append(
                f"promptTuning.virtualTokens {tuning.virtual_tokens} vs the adapter's "
                f"{config.get('num_virtual_tokens')}"
            )
    else:
        lora = method.lora
        for name, key in LORA_FIELDS.items():
            if name not in lora.model_fields_set:
                continue
            ours, theirs = getattr(lora, name), config.get(key)
            if name == "target_modules":
                ours = "all-linear" if ours == ["all-linear"] else sorted(ours)
                theirs = theirs if isinstance(theirs, str) else sorted(theirs or [])
                if ours == "all-linear":
                    continue  # peft records all-linear as the module names it found
            if ours != theirs and not (isinstance(ours, float) and ours == theirs):
                camel = "".join(w.capitalize() if i else w for i, w in enumerate(name.split("_")))
                conflicts.append(f"lora.{camel} {ours} vs the adapter's {theirs}")
    if conflicts:
        raise InvalidConfigError(
            f"{FIELD}: the adapter at {uri} has another shape than spec.method sets: "
            f"{'; '.join(conflicts)}; remove these fields from the spec (the adapter's shape is "
            "used) or make them match"
        )


def load_init_adapter(
    model: torch.nn.Module, folder: Path, method: MethodSpec, base_source: str
) -> PeftModel:
    """`model` with the adapter in `folder` on it, trainable; InvalidConfigError if it does not fit."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    from kubetune.trainer.model import peft_without_deprecation_noise

    uri = str(folder)
    config = read_adapter_config(folder, uri)
    check_adapter_config(config, method, uri)
    recorded = config.get("base_model_name_or_path")
    saved = _saved_tensors(folder)
    try:
        with peft_without_deprecation_noise():
            model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except (RuntimeError, ValueError, KeyError) as e:
        # "size mismatch for ...", "Target modules {...} not found in the base model".
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        # torch lists every "size mismatch for <tensor>: ..." under a generic first line.
        telling = next(
            (line for line in lines if "size mismatch" in line), lines[0] if lines else ""
        )
        raise InvalidConfigError(
            f"{FIELD}: the adapter does not fit spec.model.source {base_source} (it was made for "
            f"{recorded or 'an unrecorded base'}): {telling[:400]}; continue from an adapter "
            "trained on this base model"
        ) from None
    expected = {key: tuple(value.shape) for key, value in get_peft_model_state_dict(model).items()}
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    wrong = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
    if missing or extra or wrong:
        details = []
        if extra:
            details.append(f"{len(extra)} adapter tensors have no place in this model ({extra[0]})")
        if missing:
            details.append(
                f"{len(missing)} of this model's adapter tensors are absent ({missing[0]})"
            )
        if wrong:
            details.append(
                f"{len(wrong)} have another shape ({wrong[0]}: {saved[wrong[0]]} vs {expected[wrong[0]]})"
            )
        raise InvalidConfigError(
            f"{FIELD}: the adapter does not fit spec.model.source {base_source} (it was made for "
            f"{recorded or 'an unrecorded base'}): {'; '.join(details)}; continue from an adapter "
            "trained on this base model"
        )
    if recorded and recorded != base_source:
        log.warning(
            "%s was trained on %s, this run's base is %s: continuing, since its weights fit this "
            "model exactly (every tensor has its place and shape)",
            FIELD,
            recorded,
            base_source,
        )
    log.info("continuing from the adapter in %s (%d tensors)", folder, len(saved))
    return model


def _saved_tensors(folder: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the adapter's tensors, as peft names them in its state dict."""
    path = folder / WEIGHTS[0]
    if path.exists():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    import torch

    state = torch.load(folder / WEIGHTS[1], map_location="cpu", weights_only=True)
    return {key: tuple(value.shape) for key, value in state.items()}
