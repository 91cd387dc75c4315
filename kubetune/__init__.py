"""kubetune: fine-tune language models on Kubernetes.

Packages: `kubetune.api` (the TuningJob model and the operator/trainer contract),
`kubetune.operator` (the kopf operator; folder operator/), `kubetune.trainer` (the
QLoRA trainer; folder trainer/), `kubetune.cli` (the `kubetune` command).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kubetune")
except PackageNotFoundError:  # running from a checkout without an install
    __version__ = "0.0.0"
