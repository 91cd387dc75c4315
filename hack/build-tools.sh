#!/usr/bin/env bash
# Builds the real binaries the test ground runs, from the official Go modules, and
# caches them outside the clone keyed by version, so CI and later sessions reuse them:
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (hack/tools/kubernetes)
#   etcd                                                             (hack/tools/etcd)
#   kwok (and its stage definitions), helm                          (go install pkg@version)
#
# With --kind, also the parts of a kind node image (hack/kind/build-node-image.sh), each
# from its Go module at the version kind v0.33 or kubeadm expects:
#
#   kubelet, kubeadm, kube-proxy                   (hack/tools/kubernetes, same version)
#   kind, containerd + ctr + shim, runc, crictl, the CNI plugins kind uses, CoreDNS,
#   local-path-provisioner, flanneld (the cluster's CNI), etcd as kubeadm pins it
#   (hack/tools/etcd-kubeadm), runc-capfilter
#
# Usage: hack/build-tools.sh [--kind]          build what is missing, then print NAME=PATH lines
#        hack/build-tools.sh [--kind] --check  exit 1 (building nothing) if anything is missing
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
# The kind node image's parts (--kind). kind's own base image (kind v0.33.0,
# images/base/Dockerfile) builds the same containerd, crictl and CNI plugin versions.
# CoreDNS is the version kubeadm v1.36 deploys (constants.CoreDNSVersion);
# local-path-provisioner v0.0.30 is the newest release the module proxy serves (kind
# v0.33 builds v0.0.34). The cluster's CNI is flannel, not kind's kindnetd: the module
# proxy does not serve kindnetd (nor flannel's CNI plugin), it does serve flannel.
KIND_VERSION="v0.33.0"
CONTAINERD_VERSION="v2.3.4"
# runc as kind's base builds it: Debian bookworm's runc 1.1.5 fails to start any pod
# sandbox on recent kernels ("can't get final child's PID from pipe: EOF", seen on 6.18).
# It needs cgo, gcc and libseccomp (Debian: libseccomp-dev), for the seccomp profiles the
# restricted Pod Security Standard requires; built here, it links the glibc of this
# machine, so the node image's Debian (bookworm) must be as new (it is where CI runs).
RUNC_VERSION="v1.4.3"
CRICTL_VERSION="v1.36.0"
CNI_PLUGINS_VERSION="v1.9.1"
COREDNS_VERSION="v1.14.2"
LOCAL_PATH_VERSION="v0.0.30"
FLANNEL_VERSION="v0.28.10"
ETCD_KUBEADM_VERSION="$(module_version "$here/tools/etcd-kubeadm/go.mod" go.etcd.io/etcd/server/v3)"
for v in K8S_VERSION ETCD_VERSION ETCD_KUBEADM_VERSION; do
  [[ -n "${!v}" ]] || { echo "build-tools: cannot read $v from hack/tools/*/go.mod" >&2; exit 1; }
done

check_only=false
with_kind=false
for arg in "$@"; do
  case "$arg" in
    --check) check_only=true ;;
    --kind) with_kind=true ;;
    *) echo "build-tools: unknown argument $arg (usage: build-tools.sh [--kind] [--check])" >&2; exit 2 ;;
  esac
done

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
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "$(k8s_ldflags)" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
}

# The node's binaries, from the same module and version as the control plane the ground
# runs; a group of their own so that the ground does not build them.
build_kubernetes_node() {
  cd "$here/tools/kubernetes"
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "$(k8s_ldflags)" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kube-proxy
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

build_kind() {
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"
}

build_containerd() {
  # Static, without the snapshotters kind never selects (as kind's base image builds it).
  local pkg=github.com/containerd/containerd/v2
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -tags "no_aufs no_zfs no_btrfs no_devmapper" \
    -ldflags "-s -w -X $pkg/version.Version=$CONTAINERD_VERSION" \
    "$pkg/cmd/containerd@$CONTAINERD_VERSION" "$pkg/cmd/ctr@$CONTAINERD_VERSION" \
    "$pkg/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
}

build_runc() {
  pkg-config --exists libseccomp 2>/dev/null \
    || { echo "runc needs libseccomp's headers: apt-get install libseccomp-dev (Debian/Ubuntu)"; return 1; }
  CGO_ENABLED=1 GOBIN="$out" go install -trimpath -tags seccomp \
    -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
}

build_crictl() {
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
}

build_cni_plugins() {
  local pkg=github.com/containernetworking/plugins/plugins
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "-s -w" \
    "$pkg/ipam/host-local@$CNI_PLUGINS_VERSION" "$pkg/main/loopback@$CNI_PLUGINS_VERSION" \
    "$pkg/main/ptp@$CNI_PLUGINS_VERSION" "$pkg/meta/portmap@$CNI_PLUGINS_VERSION"
}

build_coredns() {
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
    "github.com/coredns/coredns@$COREDNS_VERSION"
}

build_local_path() {
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath \
    -ldflags "-s -w -X main.VERSION=$LOCAL_PATH_VERSION" \
    "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION"
}

build_flanneld() {
  # flanneld's main imports every backend, and two cannot build here: the tencentvpc
  # backend needs a Tencent Cloud SDK module whose source the proxy refuses (403), and the
  # udp backend needs cgo. The cluster uses host-gw only, so the module's source (from the
  # proxy, checked against go.sum) is copied to a scratch folder and built without those
  # two imports; nothing else changes.
  local pkg=github.com/flannel-io/flannel src
  src="$(go mod download -json "$pkg@$FLANNEL_VERSION" | awk -F'"' '$2 == "Dir" {print $4}')"
  [[ -f "$src/main.go" ]] || { echo "go mod download $pkg@$FLANNEL_VERSION gave no source"; return 1; }
  cp -r "$src" "$out/src"
  chmod -R u+w "$out/src"
  cd "$out/src"
  for backend in tencentvpc udp; do
    grep -q "\"$pkg/pkg/backend/$backend\"" main.go \
      || { echo "flannel $FLANNEL_VERSION's main.go no longer imports the $backend backend: revisit build_flanneld"; return 1; }
    sed -i "\\|\"$pkg/pkg/backend/$backend\"|d" main.go
  done
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X $pkg/pkg/version.Version=$FLANNEL_VERSION" \
    -o "$out/flanneld" .
  cd "$out"
  rm -rf "$out/src"
}

build_etcd_kubeadm() {
  cd "$here/tools/etcd-kubeadm"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd" .
}

build_group kubernetes "$K8S_VERSION" kube-apiserver kube-controller-manager kube-scheduler kubectl -- build_kubernetes
build_group etcd "$ETCD_VERSION" etcd -- build_etcd
build_group kwok "$KWOK_VERSION" kwok stages.yaml -- build_kwok
build_group helm "$HELM_VERSION" helm -- build_helm
if $with_kind; then
  build_group kubernetes-node "$K8S_VERSION" kubelet kubeadm kube-proxy -- build_kubernetes_node
  build_group kind "$KIND_VERSION" kind -- build_kind
  build_group containerd "$CONTAINERD_VERSION" containerd ctr containerd-shim-runc-v2 -- build_containerd
  build_group runc "$RUNC_VERSION" runc -- build_runc
  build_group crictl "$CRICTL_VERSION" crictl -- build_crictl
  build_group cni-plugins "$CNI_PLUGINS_VERSION" host-local loopback ptp portmap -- build_cni_plugins
  build_group coredns "$COREDNS_VERSION" coredns -- build_coredns
  build_group local-path-provisioner "$LOCAL_PATH_VERSION" local-path-provisioner -- build_local_path
  build_group flannel "$FLANNEL_VERSION" flanneld -- build_flanneld
  build_group etcd "$ETCD_KUBEADM_VERSION" etcd -- build_etcd_kubeadm
fi

for bin in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  echo "$bin=$cache/kubernetes-$K8S_VERSION/$bin"
done
echo "etcd=$cache/etcd-$ETCD_VERSION/etcd"
echo "kwok=$cache/kwok-$KWOK_VERSION/kwok"
echo "kwok-stages=$cache/kwok-$KWOK_VERSION/stages.yaml"
echo "helm=$cache/helm-$HELM_VERSION/helm"
if $with_kind; then
  for bin in kubelet kubeadm kube-proxy; do
    echo "$bin=$cache/kubernetes-node-$K8S_VERSION/$bin"
  done
  echo "kubernetes-version=$K8S_VERSION"
  echo "kind=$cache/kind-$KIND_VERSION/kind"
  echo "containerd-dir=$cache/containerd-$CONTAINERD_VERSION"
  echo "runc=$cache/runc-$RUNC_VERSION/runc"
  echo "crictl=$cache/crictl-$CRICTL_VERSION/crictl"
  echo "cni-plugins-dir=$cache/cni-plugins-$CNI_PLUGINS_VERSION"
  echo "coredns=$cache/coredns-$COREDNS_VERSION/coredns"
  echo "coredns-version=$COREDNS_VERSION"
  echo "local-path-provisioner=$cache/local-path-provisioner-$LOCAL_PATH_VERSION/local-path-provisioner"
  echo "local-path-version=$LOCAL_PATH_VERSION"
  echo "flanneld=$cache/flannel-$FLANNEL_VERSION/flanneld"
  echo "flannel-version=$FLANNEL_VERSION"
  echo "etcd-kubeadm=$cache/etcd-$ETCD_KUBEADM_VERSION/etcd"
  echo "etcd-kubeadm-version=$ETCD_KUBEADM_VERSION"
fi
