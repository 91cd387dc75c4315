#!/usr/bin/env bash
# Builds one of the small Go tools under hack/tools/NAME (a Go module of its own) on
# first use, caches it next to hack/build-tools.sh's binaries, and prints its path.
#
#   hack/go-tool.sh kindconfig        # checks kind-config.yaml against kind's API types
#   hack/go-tool.sh helm-docs         # writes the chart README from values.yaml
#   hack/go-tool.sh kubeconform       # validates Kubernetes objects against JSON schemas
#   hack/go-tool.sh promtool          # checks Prometheus metrics expositions
#
# The cache key is a hash of the module's Go files (in subfolders too), so a version
# bump in go.mod (or a change to the tool's source) builds afresh; a finished build is marked `.complete`
# last, so an interrupted one is never used. A module with `tool` directives builds
# those; one with its own main package builds that. A `build-tags` file in the tool's folder
# gives Go build tags (part of the key). Progress goes to stderr.
set -euo pipefail

name="${1:?usage: hack/go-tool.sh NAME}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/tools/$name"
[[ -f "$src/go.mod" ]] || { echo "go-tool: no Go module at $src" >&2; exit 2; }
cache="${KUBETUNE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/tools}"
key="$(cd "$src" && find . -type f \( -name "go.*" -o -name "*.go" -o -name build-tags \) -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-12)"
tags="$(grep -v '^#' "$src/build-tags" 2>/dev/null | tr -s ' \n' ',' | sed 's/^,//; s/,$//' || true)"
dest="$cache/$name-$key"

if [[ ! -f "$dest/.complete" ]]; then
  command -v go >/dev/null || { echo "go-tool: building $name needs a Go toolchain on PATH" >&2; exit 1; }
  mkdir -p "$cache"
  out="$(mktemp -d "$cache/.building-$name-XXXXXX")"
  echo "go-tool: building $name (first use; cached in $dest)" >&2
  if grep -q '^tool ' "$src/go.mod"; then
    (cd "$src" && CGO_ENABLED=0 GOBIN="$out" go install -trimpath -tags "$tags" -ldflags "-s -w" tool) >&2
  else
    (cd "$src" && CGO_ENABLED=0 go build -trimpath -tags "$tags" -ldflags "-s -w" -o "$out/$name" .) >&2
  fi
  [[ -x "$out/$name" ]] || { rm -rf "$out"; echo "go-tool: the build of $name produced no $name" >&2; exit 1; }
  touch "$out/.complete"
  rm -rf "$dest"
  mv "$out" "$dest"
fi
echo "$dest/$name"
