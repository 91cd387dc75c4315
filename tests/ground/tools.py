"""Where the ground's binaries are: the cache hack/build-tools.sh fills.

The script is the one source of versions and paths: this module runs it with
`--check` (builds nothing) and reads its NAME=PATH lines. Building is `make tools`'
job (minutes, once per machine), not a fixture's: a fixture that finds the cache
empty fails at once with the command to run.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.ground.process import SETUP_HINT, GroundError

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-tools.sh"

# The names build-tools.sh prints, in its order.
TOOL_NAMES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "etcd",
    "kwok",
    "kwok-stages",
    "helm",
)
# What an external cluster still needs from this machine (see `find_tools`).
CLIENT_TOOLS = ("kubectl", "helm", "kwok", "kwok-stages")


@dataclass(frozen=True)
class Tools:
    """Paths of the built binaries (and kwok's stage file), by build-tools.sh name."""

    paths: dict[str, Path]

    def __getitem__(self, name: str) -> Path:
        try:
            return self.paths[name]
        except KeyError:
            raise GroundError(name, "not available on this machine") from None

    def __contains__(self, name: str) -> bool:
        return name in self.paths

    @property
    def bin_dirs(self) -> list[Path]:
        """Folders holding the binaries, for a PATH a person or a test can use."""
        dirs: list[Path] = []
        for name, path in self.paths.items():
            if name != "kwok-stages" and path.parent not in dirs:
                dirs.append(path.parent)
        return dirs


def _parse(output: str) -> dict[str, Path]:
    paths = {}
    for line in output.splitlines():
        name, sep, path = line.partition("=")
        if sep and name in TOOL_NAMES:
            paths[name] = Path(path)
    return paths


def find_tools(*, need_control_plane: bool = True) -> Tools:
    """The built binaries; GroundError with the command to run if they are missing.

    need_control_plane=False (a run against an existing cluster): kubectl, helm and kwok
    are taken from the cache when built, else from PATH; missing ones are simply absent
    and a test that needs one fails when it asks for it.
    """
    result = subprocess.run(
        [str(BUILD_SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    paths = _parse(result.stdout)
    if result.returncode == 0 and all(name in paths for name in TOOL_NAMES):
        return Tools(paths)
    if need_control_plane:
        raise GroundError(
            "binaries",
            f"the control-plane binaries are not built yet ({result.stderr.strip() or result.stdout.strip()})",
            hint=SETUP_HINT,
        )
    found = {}
    for name in CLIENT_TOOLS:
        if name in paths:
            found[name] = paths[name]
        elif (on_path := shutil.which(name)) is not None:
            found[name] = Path(on_path)
    return Tools(found)
