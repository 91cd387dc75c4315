"""A failed image build says which image, why, and what to try (hack/images/build.sh)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_build_whose_base_cannot_be_had_says_so_and_what_to_try(docker: str) -> None:
    result = subprocess.run(
        [str(ROOT / "hack/images/build.sh"), "operator"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={
            **os.environ,
            "DOCKER": docker,
            "TAG": "test-missing-base",
            # A base no registry has (or can be reached for): the build must stop on it.
            "BUILD_ARGS": "--build-arg PYTHON_IMAGE=kubetune-test-no-such-base:none",
        },
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "images: building kubetune-operator:test-missing-base (Dockerfile.operator) failed: "
        "a base image could not be found locally or pulled: without a registry, build with "
        "IMAGE_BASES=local"
    ), result.stderr
    assert "Full log: " in last
    probe = subprocess.run(
        [docker, "image", "inspect", "kubetune-operator:test-missing-base"],
        capture_output=True,
        check=False,
    )
    assert probe.returncode != 0, "a failed build left an image behind"
