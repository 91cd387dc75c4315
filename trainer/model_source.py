"""Where the base model comes from: s3://, pvc://, hf:// or a local path → a local folder.

- `s3://bucket/prefix/`: downloaded in parallel to the scratch volume, cached there by
  ETag (`Storage.download_prefix`), so a restarted pod does not download it again.
- `pvc://claim/path`: the operator mounts the claim read-only at
  `contract.PVC_MOUNT_ROOT/<claim>` (/mnt/pvc); the folder is used in place.
- `hf://org/name`: `huggingface_hub.snapshot_download` into the scratch volume, at
  `spec.model.revision`; where no hub is reachable (air-gapped clusters, CI) this is a
  clear error that says to mirror the model to S3 or a PVC.
- anything else: a local path (for `kubetune train` on a workstation).

`check_model_folder` then makes sure the folder holds a config and weights, so a wrong
prefix fails in seconds with a list of what *is* there, not minutes later inside
transformers.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from kubetune.api.contract import PVC_MOUNT_ROOT
from kubetune.api.locations import (
    as_prefix,
    hf_repo,
    local_path,
    location_kind,
    pvc_claim,
    pvc_local_path,
)
from kubetune.api.v1alpha1 import ModelSpec
from kubetune.trainer.errors import InvalidConfigError, StorageAccessError
from kubetune.trainer.storage import Storage

log = logging.getLogger(__name__)

# Overrides contract.PVC_MOUNT_ROOT outside a pod (tests, a workstation with the volume mounted).
PVC_MOUNT_ROOT_ENV = "KUBETUNE_PVC_ROOT"

WEIGHT_PATTERNS = (
    "*.safetensors",
    "pytorch_model*.bin",
    "*.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def fetch_model(model: ModelSpec, storage: Storage, scratch: Path) -> Path:
    """The local folder holding the model `model.source` names (downloading it if needed)."""
    source = model.source
    kind = location_kind(source)
    if kind == "s3":
        folder = scratch / "models" / _slug(source)
        storage.download_prefix(as_prefix(source), folder, progress=True)
        return folder
    if kind == "pvc":
        return _pvc_path(source)
    if kind == "hf":
        return _hub_snapshot(hf_repo(source), model.revision, scratch / "hf")
    if kind == "unsupported":
        raise InvalidConfigError(
            f"spec.model.source: '{source}' has an unsupported scheme; use s3://bucket/prefix/, "
            "pvc://claim/path, hf://org/name or a local path"
        )
    path = Path(local_path(source)).expanduser()
    if not path.is_dir():
        raise InvalidConfigError(
            f"spec.model.source: {path} is not a folder (a local model folder was expected)"
        )
    return path


def check_model_folder(folder: Path, source: str) -> None:
    """A transformers model folder has config.json and weights; say what is missing."""
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    listing = ", ".join(present[:20]) or "nothing"
    if "config.json" not in present:
        raise InvalidConfigError(
            f"spec.model.source: {source} has no config.json (found: {listing}); point it at the "
            "folder that holds the model's config.json, weights and tokenizer"
        )
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise InvalidConfigError(
            f"spec.model.source: {source} has a config.json but no weights (*.safetensors or "
            f"pytorch_model*.bin; found: {listing}); upload the weights next to the config"
        )


def _pvc_path(source: str) -> Path:
    claim = pvc_claim(source)
    if claim is None:
        raise InvalidConfigError(
            f"spec.model.source: '{source}' names no claim; write pvc://CLAIM/PATH"
        )
    # The operator mounts the claim at PVC_MOUNT_ROOT/CLAIM (contract.pvc_local_path).
    root = Path(os.environ.get(PVC_MOUNT_ROOT_ENV, PVC_MOUNT_ROOT))
    path = root / Path(pvc_local_path(source)).relative_to(PVC_MOUNT_ROOT)
    if not path.is_dir():
        raise InvalidConfigError(
            f"spec.model.source: {source}: {path} is not a folder; the claim '{claim}' is mounted at "
            f"{root / claim} in the training pod (pvc:// sources only exist inside the cluster; "
            "use a local path for `kubetune train` on a workstation)"
        )
    return path


def _hub_snapshot(repo: str, revision: str | None, cache: Path) -> Path:
    if repo.count("/") != 1:
        raise InvalidConfigError(f"spec.model.source: 'hf://{repo}': write hf://ORG/NAME")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    log.info(
        "downloading hf://%s (revision %s) from the Hugging Face hub", repo, revision or "main"
    )
    try:
        folder = snapshot_download(
            repo_id=repo,
            revision=revision,
            cache_dir=str(cache),
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"],
        )
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise StorageAccessError(
            f"spec.model.source: hf://{repo}: no such repository, or it is gated/private and needs a "
            f"token (HF_TOKEN from a Secret) ({type(e).__name__})"
        ) from None
    except RevisionNotFoundError:
        raise InvalidConfigError(
            f"spec.model.revision: '{revision}' does not exist in hf://{repo}"
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        # No network, DNS failure, HF_HUB_OFFLINE, a proxy refusing: all "unreachable".
        raise StorageAccessError(
            f"spec.model.source: hf://{repo}: the Hugging Face hub is not reachable from here "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); mirror the model to S3 "
            "(s3://bucket/prefix/) or a PVC (pvc://claim/path) and point spec.model.source there"
        ) from None
    return Path(folder)


def _slug(uri: str) -> str:
    """A stable folder name for a URI: readable tail plus a short hash."""
    tail = uri.rstrip("/").rsplit("/", 1)[-1] or "model"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in tail)[:60]
    return f"{safe}-{hashlib.sha256(uri.encode()).hexdigest()[:10]}"
