"""Print kind's default storage manifest, with its images replaced by local ones.

kind writes its manifests into the node image at build time (/kind/manifests/) and
applies them when it creates a cluster. The storage one lives in kind's Go source as a
string constant (pkg/build/nodeimage/const_storage.go), so this reads it from the kind
module that hack/build-tools.sh --kind downloaded: a string constant made of raw-string
literals and other constants of the same file joined by `+`.

    python3 kind_manifests.py KIND_MODULE_DIR storage OLD=NEW...

kind's default CNI manifest (kindnetd) is not used: the Go module proxy does not serve
kindnetd, so the node image's default CNI is hack/kind/flannel.yaml.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

FILES = {
    "storage": ("const_storage.go", "defaultStorageManifest"),
}
CONST = re.compile(
    r"^const (\w+) = ((?:`[^`]*`|\"[^\"]*\"|\w+)(?:\s*\+\s*(?:`[^`]*`|\"[^\"]*\"|\w+))*)",
    re.M | re.S,
)
PART = re.compile(r"`([^`]*)`|\"([^\"]*)\"|(\w+)", re.S)


def constants(source: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, expression in CONST.findall(source):
        text = ""
        for raw, quoted, ident in PART.findall(expression):
            if ident:
                if ident not in values:
                    raise SystemExit(
                        f"kind_manifests: {name} uses {ident}, not a constant defined before it"
                    )
                text += values[ident]
            else:
                text += raw or quoted
        values[name] = text
    return values


def main() -> None:
    module, which, *replacements = sys.argv[1:]
    if which not in FILES:
        raise SystemExit(f"kind_manifests: unknown manifest {which!r} (known: {', '.join(FILES)})")
    filename, const = FILES[which]
    values = constants((Path(module) / "pkg/build/nodeimage" / filename).read_text())
    manifest = values[const]
    for pair in replacements:
        old, new = pair.split("=", 1)
        if old not in manifest:
            raise SystemExit(f"kind_manifests: {which} manifest of {module} names no image {old}")
        manifest = manifest.replace(old, new)
    sys.stdout.write(manifest)


if __name__ == "__main__":
    main()
