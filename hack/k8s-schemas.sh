#!/usr/bin/env bash
# Prepares the JSON schemas of Kubernetes' built-in kinds that kubeconform validates
# against, on first use, caches them next to the other tools, and prints their folder.
#
#   hack/k8s-schemas.sh    # -> $cache/kubernetes-json-schema-<package version>
#
# They come from the PyPI package kubernetes-validate (Apache-2.0), which ships the
# schemas of every Kubernetes release, generated from its OpenAPI document; uv fetches
# it (into uv's own cache: no change to uv.lock). Inside, each schema names itself
# https://kubernetes.io/api/... and refers to "/api/_definitions.json", which the
# package's own loader maps to its files; kubeconform would fetch that URL. So the
# copies here lose their "$id" and refer to "_definitions.json" next to them, and
# nothing else changes. The folder is <kubernetes version>-local-strict/, as
# kubeconform's -schema-location template {{ .NormalizedKubernetesVersion }}-local
# {{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json expects (strict:
# additionalProperties false everywhere). A finished copy is marked `.complete` last.
set -euo pipefail

PACKAGE_VERSION="1.37.0"
# The chart's minimum (Chart.yaml kubeVersion) and the newest the package has.
KUBERNETES_VERSIONS=(1.31.0 1.37.0)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${KUBETUNE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/tools}"
dest="$cache/kubernetes-json-schema-$PACKAGE_VERSION"

if [[ ! -f "$dest/.complete" ]]; then
  # uv as the Makefile finds it: on PATH, else the one `make deps` installed for python3.
  if command -v uv >/dev/null; then
    uv=(uv)
  elif python3 -m uv --version >/dev/null 2>&1; then
    uv=(python3 -m uv)
  else
    echo "k8s-schemas: needs uv (make deps installs it)" >&2
    exit 1
  fi
  mkdir -p "$cache"
  out="$(mktemp -d "$cache/.building-kubernetes-json-schema-XXXXXX")"
  echo "k8s-schemas: preparing kubernetes-validate $PACKAGE_VERSION schemas (${KUBERNETES_VERSIONS[*]}) in $dest" >&2
  if ! (cd "$here" && "${uv[@]}" run --quiet --no-project --with "kubernetes-validate==$PACKAGE_VERSION" \
      python - "$out" "${KUBERNETES_VERSIONS[@]}") <<'EOF' >&2
import json
import sys
from pathlib import Path

import kubernetes_validate

out, versions = Path(sys.argv[1]), sys.argv[2:]
package = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
for version in versions:
    source = package / f"v{version}-local-strict"
    if not source.is_dir():
        sys.exit(f"k8s-schemas: kubernetes-validate has no schemas for Kubernetes {version}")
    target = out / source.name
    target.mkdir(parents=True)
    for path in source.glob("*.json"):
        text = path.read_text(encoding="utf-8").replace(
            '"/api/_definitions.json#', '"_definitions.json#'
        )
        schema = json.loads(text)
        schema.pop("$id", None)
        (target / path.name).write_text(json.dumps(schema), encoding="utf-8")
EOF
  then
    rm -rf "$out"
    echo "k8s-schemas: FAILED to prepare the schemas (uv could not fetch kubernetes-validate $PACKAGE_VERSION from PyPI?)" >&2
    exit 1
  fi
  touch "$out/.complete"
  rm -rf "$dest"
  mv "$out" "$dest"
fi
echo "$dest"
