#!/usr/bin/env bash
# Builds the real binaries the test ground runs, from the official Go modules, and
# caches them outside the clone keyed by version, so CI and later sessions reuse them:
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (hack/tools/kubernetes)
#   etcd                                                             (hack/tools/etcd)
#   kwok (and its stage definitions), helm                          (go install pkg@version)
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
# module_version GO_MOD MODULE: the version GO_MOD requires, from either form of
# require (a block line "MODULE vX" or a single line "require MODULE vX").
module_version() {
  awk -v mod="$2" '$1 == mod {print $2; exit} $1 == "require" && $2 == mod {print $3; exit}' "$1"
}
K8S_VERSION="$(module_version "$here/tools/kubernetes/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(module_version "$here/tools/etcd/go.mod" go.etcd.io/etcd/server/v3)"
for v in K8S_VERSION ETCD_VERSION; do
  [[ -n "${!v}" ]] || { echo "build-tools: cannot read $v from hack/tools/*/go.mod" >&2; exit 1; }
done

check_only=false
[[ "${1:-}" == "--check" ]] && check_only=true

log() { echo "build-tools: $*" >&2; }

fail() {
  local what="$1" why="$2"
  cat >&2 <<EOF
build-tools: FAILED to build $what.
$why

The Go build needs the Go module proxy (GOPROXY=$(go env GOPROXY 2>/dev/null || echo unknown))
and about 7 GiB free under $(go env GOMODCACHE 2>/dev/null || echo '$GOMODCACHE') and $cache.
To run the integration and e2e tiers against an existing cluster instead of the built-in
one, set KUBETUNE_TEST_KUBECONFIG=/path/to/kubeconfig (see docs/testing.md).
EOF
  exit 1
}

# build_group NAME VERSION FILES... -- COMMAND...
# Runs COMMAND with $out set to a scratch folder; moves it into the cache when all
# FILES are there. A cached folder missing one of FILES (made by an older version of
# this script) is rebuilt.
build_group() {
  local name="$1" version="$2"; shift 2
  local bins=()
  while [[ "$1" != "--" ]]; do bins+=("$1"); shift; done
  shift
  local dest="$cache/$name-$version"
  if [[ -f "$dest/.complete" ]] && all_present "$dest" "${bins[@]}"; then
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
  if ! all_present "$out" "${bins[@]}"; then
    rm -rf "$out"
    fail "$name $version" "The build finished without producing all of: ${bins[*]}."
  fi
  rm -f "$out/build.log"
  chmod 755 "$out"
  touch "$out/.complete"
  rm -rf "$dest"
  mv "$out" "$dest"
  log "built $name $version in $((SECONDS - started))s: $(du -sh "$dest" | cut -f1)"
}

all_present() {
  local dir="$1"; shift
  for file in "$@"; do
    [[ -s "$dir/$file" ]] || return 1
  done
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

# The kwok binary simulates nothing without stages (kwokctl supplies its defaults);
# these are kwok's own, from the same release: nodes become Ready and keep a Lease,
# pods on them become Running and Ready, deleted pods go. No "pod-complete": a test
# decides how a pod on a fake node ends by patching its status.
KWOK_STAGES=(
  node/fast/node-initialize.yaml
  node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
  pod/fast/pod-ready.yaml
  pod/fast/pod-delete.yaml
)

build_kwok() {
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  local src
  src="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | awk -F'"' '$2 == "Dir" {print $4}')/kustomize/stage"
  {
    echo "# kwok $KWOK_VERSION stages (sigs.k8s.io/kwok kustomize/stage), Apache-2.0."
    for stage in "${KWOK_STAGES[@]}"; do
      echo "---"
      cat "$src/$stage"
    done
  } >"$out/stages.yaml"
}

build_helm() {
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
}

build_group kubernetes "$K8S_VERSION" kube-apiserver kube-controller-manager kube-scheduler kubectl -- build_kubernetes
build_group etcd "$ETCD_VERSION" etcd -- build_etcd
build_group kwok "$KWOK_VERSION" kwok stages.yaml -- build_kwok
build_group helm "$HELM_VERSION" helm -- build_helm

for bin in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  echo "$bin=$cache/kubernetes-$K8S_VERSION/$bin"
done
echo "etcd=$cache/etcd-$ETCD_VERSION/etcd"
echo "kwok=$cache/kwok-$KWOK_VERSION/kwok"
echo "kwok-stages=$cache/kwok-$KWOK_VERSION/stages.yaml"
echo "helm=$cache/helm-$HELM_VERSION/helm"
