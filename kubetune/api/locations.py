"""What a URI in a TuningJob names, by its scheme: one reading for the operator and the trainer.

- `s3://bucket/key` (or `s3://bucket/prefix/`): an object store, reached by the trainer
  through its credentials;
- `pvc://CLAIM/PATH`: a PersistentVolumeClaim the operator mounts read-only at
  `contract.PVC_MOUNT_ROOT/CLAIM` (models only);
- `hf://org/name`: a Hugging Face hub repository (models only);
- `file://path` or a bare path: the local file system, for `kubetune train` and
  `kubetune prepare` on a workstation;
- anything else with `://`: unsupported.

The operator checks that a spec names only what a pod can reach (operator/validation.py);
the trainer dispatches on the same kinds (model_source.py, tokenizer.py, data/pipeline.py,
storage/uri.py). Nothing here touches the network.
"""

from __future__ import annotations

from typing import Literal

from kubetune.api.contract import PVC_MOUNT_ROOT

S3_SCHEME = "s3://"
PVC_SCHEME = "pvc://"
HF_SCHEME = "hf://"
FILE_SCHEME = "file://"

LocationKind = Literal["s3", "pvc", "hf", "local", "unsupported"]


def location_kind(uri: str) -> LocationKind:
    """Which kind of location `uri` names (file:// and bare paths are both "local")."""
    if uri.startswith(S3_SCHEME):
        return "s3"
    if uri.startswith(PVC_SCHEME):
        return "pvc"
    if uri.startswith(HF_SCHEME):
        return "hf"
    if uri.startswith(FILE_SCHEME) or "://" not in uri:
        return "local"
    return "unsupported"


def local_path(uri: str) -> str:
    """The path a local location names (`file://` removed)."""
    return uri.removeprefix(FILE_SCHEME)


def hf_repo(uri: str) -> str:
    """The repository in hf://ORG/NAME ('ORG/NAME', slashes at the ends removed)."""
    return uri.removeprefix(HF_SCHEME).strip("/")


def pvc_claim(uri: str) -> str | None:
    """The claim name in a pvc://CLAIM/PATH URI; None for any other URI."""
    if not uri.startswith(PVC_SCHEME):
        return None
    return uri[len(PVC_SCHEME) :].split("/", 1)[0] or None


def pvc_local_path(uri: str) -> str:
    """Where the pod sees pvc://CLAIM/PATH."""
    claim = pvc_claim(uri)
    if claim is None:
        raise ValueError(f"not a pvc://CLAIM/PATH URI: {uri!r}")
    rest = uri[len(PVC_SCHEME) + len(claim) :].lstrip("/")
    return f"{PVC_MOUNT_ROOT}/{claim}/{rest}".rstrip("/")


def as_prefix(uri: str) -> str:
    """The URI as a folder: ending in '/'."""
    return uri if uri.endswith("/") else uri + "/"
