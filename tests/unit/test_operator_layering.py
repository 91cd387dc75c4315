"""Layering: the pure parts import no Kubernetes client, no kopf, no HTTP.

`kubetune render` runs from the base install (no operator extra), so the builder, the
validation and the settings must not need kopf, kubernetes, aiohttp or prometheus_client.
"""

from __future__ import annotations

import subprocess
import sys


def test_render_and_the_pure_modules_need_no_operator_dependencies(tmp_path) -> None:
    code = (
        "import sys;"
        "import kubetune.operator.builders, kubetune.operator.validation, kubetune.operator.settings,"
        " kubetune.operator.render, kubetune.operator.events, kubetune.api.crd;"
        "bad = {'kopf', 'kubernetes', 'aiohttp', 'prometheus_client', 'torch'} & set(sys.modules);"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_status_computation_calls_no_api() -> None:
    code = (
        "import sys; import kubetune.operator.observe;"
        "bad = {'kopf', 'kubernetes', 'aiohttp'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
