#!/usr/bin/env bash
# Builds the real binaries the test ground runs, from the official Go modules, and
# caches them outside the clone keyed by version, so CI and later sessions reuse them:
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (hack/tools/kubernetes)
#   etcd                                                             (hack/tools/etcd)
#   kwok, helm                                                       (go install pkg@version)
#
# Usage: hack/build-tools.sh            build what is missing, then print NAME=PATH lines
#        hack/build-tools.sh --check    exit 1 (building nothing) if anything is missing
#
# The cache lives in $KUBETUNE_TOOLS_CACHE (default ~/.cache/kubetune/tools). Each
# version's binaries sit in their own folder, completed by a `.complete` marker that
# is written last, so an interrupted build is never mistaken for a finished one.
# Progress goes to stderr; stdout carries only the NAME=PATH lines.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${KUBETUNE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/tools}"

KWOK_VERSION="v0.8.0"
HELM_VERSION="v4.3.1"
# The Kubernetes and etcd versions are the ones their go.mod files pin.
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/tools/kubernetes/go.mod")"
ETCD_VERSION="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$here/tools/etcd/go.mod")"

check_only=false
[[ "${1:-}" == "--check" ]] && check_only=true

log() { echo "build-tools: $*" >&2; }

fail() {
  local what="$1" why="$2"
  cat >&2 <<EOF
build-tools: FAILED to build $what.
$why

The Go build needs the Go module proxy (GOPROXY=$(go env GOPROXY 2>/dev/null || echo unknown))
and about 6 GiB free under $(go env GOMODCACHE 2>/dev/null || echo '$GOMODCACHE') and $cache.
To run the integration and e2e tiers against an existing cluster instead of the built-in
one, set KUBETUNE_TEST_KUBECONFIG=/path/to/kubeconfig (see docs/testing.md).
EOF
  exit 1
}

# build_group NAME VERSION BINARIES... -- COMMAND...
# Runs COMMAND with $out set to a scratch folder; moves it into the cache when all
# BINARIES are there.
build_group() {
  local name="$1" version="$2"; shift 2
  local bins=()
  while [[ "$1" != "--" ]]; do bins+=("$1"); shift; done
  shift
  local dest="$cache/$name-$version"
  if [[ -f "$dest/.complete" ]]; then
    return 0
  fi
  if $check_only; then
    log "$name $version is not built yet ($dest)"
    exit 1
  fi
  command -v go >/dev/null || fail "$name $version" "No Go toolchain on PATH."
  mkdir -p "$cache"
  local out
  out="$(mktemp -d "$cache/.building-$name-XXXXXX")"
  local started=$SECONDS
  log "building $name $version (${bins[*]}); the first build takes minutes"
  if ! (export out; "$@") >"$out/build.log" 2>&1; then
    local tail_log
    tail_log="$(tail -n 25 "$out/build.log")"
    rm -rf "$out"
    fail "$name $version (${bins[*]})" "$tail_log"
  fi
  for bin in "${bins[@]}"; do
    [[ -x "$out/$bin" ]] || { rm -rf "$out"; fail "$name $version" "The build finished without producing $bin."; }
  done
  rm -f "$out/build.log"
  touch "$out/.complete"
  rm -rf "$dest"
  mv "$out" "$dest"
  log "built $name $version in $((SECONDS - started))s: $(du -sh "$dest" | cut -f1)"
}

k8s_ldflags() {
  local v="$K8S_VERSION" minor
  minor="$(echo "$v" | cut -d. -f2)"
  local flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build_kubernetes() {
  cd "$here/tools/kubernetes"
  # The version is stamped in so that clients (kubectl, helm's kubeVersion checks)
  # see v1.x rather than an unversioned development build.
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "$(k8s_ldflags)" tool
}

build_etcd() {
  cd "$here/tools/etcd"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd" .
}

build_kwok() {
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

build_helm() {
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
}

build_group kubernetes "$K8S_VERSION" kube-apiserver kube-controller-manager kube-scheduler kubectl -- build_kubernetes
build_group etcd "$ETCD_VERSION" etcd -- build_etcd
build_group kwok "$KWOK_VERSION" kwok -- build_kwok
build_group helm "$HELM_VERSION" helm -- build_helm

for bin in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  echo "$bin=$cache/kubernetes-$K8S_VERSION/$bin"
done
echo "etcd=$cache/etcd-$ETCD_VERSION/etcd"
echo "kwok=$cache/kwok-$KWOK_VERSION/kwok"
echo "helm=$cache/helm-$HELM_VERSION/helm"
