#!/usr/bin/env bash
# Builds a kind node image offline, for the Kubernetes version the test ground runs, and
# prints its tag on stdout. No image registry is needed: every part is compiled from Go
# modules (hack/build-tools.sh --kind) or comes from Debian packages.
#
#   hack/kind/build-node-image.sh            build if missing; print the tag
#   hack/kind/build-node-image.sh --tag      print the tag it would build, build nothing
#   kind create cluster --config kind-config.yaml --image "$(hack/kind/build-node-image.sh)"
#
# Why not `kind build node-image`: with a locally assembled kubernetes-server tarball
# (--type file) kind side-loads only the four images in the tarball (kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy) and fetches etcd, CoreDNS, pause,
# kindnetd and the local-path images from their registries inside the build container
# (`ctr content fetch`, pkg/build/nodeimage/buildcontext.go), which fails offline. This
# script does the same steps as kind's builder, with every image built here:
#
# 1. a base image (hack/kind/base): kind's own files/ tree and units, containerd, runc,
#    crictl, CNI plugins, and the runc-capfilter wrapper used where needed;
# 2. the images kubeadm runs, tagged exactly as `kubeadm config images list` names them
#    (registry.k8s.io/kube-apiserver:vX, etcd, CoreDNS, pause), and the CNI (flannel) and
#    storage images, tagged kubetune.local/...: their sources differ from the ones kind
#    v0.33 publishes (hack/build-tools.sh says why), so they do not take kind's names;
# 3. the node image: kubeadm, kubelet and kubectl in /usr/bin, /kind/version, the default
#    CNI manifest (ours, hack/kind/flannel.yaml: kind's kindnetd is not served by the Go
#    module proxy) and kind's storage manifest naming the local images, and all the images
#    imported into the node's containerd (as kind does, pinned, not unpacked).
#
# The tag is kubetune.local/kind-node:<kubernetes version>-<hash of everything that goes
# into the image>, so a changed recipe builds afresh and an unchanged one is reused
# (Docker keeps it; CI machines that keep /var/lib/docker skip the build).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
log() { echo "build-node-image: $*" >&2; }
die() { echo "build-node-image: $*" >&2; exit 1; }

tag_only=false
[[ "${1:-}" == "--tag" ]] && tag_only=true

# NAME=PATH lines from build-tools (with --tag: only if everything is built already).
tool_args=(--kind)
$tag_only && tool_args+=(--check)
tools_out="$("$root/hack/build-tools.sh" "${tool_args[@]}")" \
  || die "hack/build-tools.sh --kind failed (above)"
declare -A tool
while IFS='=' read -r name path; do tool[$name]="$path"; done <<<"$tools_out"
version="${tool[kubernetes-version]}"

# The hash covers the recipe: these scripts and Dockerfiles, the versions build-tools
# pins, and the Go modules the binaries come from.
recipe_hash="$(cd "$root" && find hack/kind/base hack/kind/images hack/kind/flannel.yaml \
    hack/kind/build-node-image.sh hack/kind/kind_manifests.py hack/build-tools.sh \
    hack/tools/kubernetes hack/tools/etcd-kubeadm hack/tools/runc-capfilter -type f -print0 \
  | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-10)"
node_image="kubetune.local/kind-node:$version-$recipe_hash"
if $tag_only; then echo "$node_image"; exit 0; fi

docker_bin="$("$root/hack/docker-engine.sh" | sed -n 's/^DOCKER=//p')"
docker() { DOCKER_BUILDKIT=1 "$docker_bin" "$@"; }

if docker image inspect "$node_image" >/dev/null 2>&1; then
  log "$node_image exists (built from this recipe before): reusing it"
  echo "$node_image"
  exit 0
fi
started=$SECONDS
base_layer="${KUBETUNE_BASE_IMAGE:-kubetune-base:bookworm}"
docker image inspect "$base_layer" >/dev/null 2>&1 \
  || die "the local Debian base image $base_layer is missing: build it first (make images), or set KUBETUNE_BASE_IMAGE to a Debian bookworm image"

kind_module="$(go mod download -json "sigs.k8s.io/kind@$("${tool[kind]}" version | awk '{print $2}')" \
  | awk -F'"' '$2 == "Dir" {print $4}')"
[[ -d "$kind_module/images/base/files" ]] || die "cannot find kind's module source (go mod download sigs.k8s.io/kind)"

# The images kubeadm will run: their names come from kubeadm itself.
mapfile -t kubeadm_images < <("${tool[kubeadm]}" config images list --kubernetes-version "$version" 2>/dev/null)
kubeadm_image() {  # NAME: the kubeadm image whose repository ends in /NAME
  local image
  for image in "${kubeadm_images[@]}"; do
    [[ "${image%:*}" == */"$1" ]] && { echo "$image"; return; }
  done
  die "kubeadm $version lists no $1 image (kubeadm config images list: ${kubeadm_images[*]})"
}
etcd_image="$(kubeadm_image etcd)"
coredns_image="$(kubeadm_image coredns)"
pause_image="$(kubeadm_image pause)"
# The binaries must be the versions the tags say.
[[ "${etcd_image##*:}" == "${tool[etcd-kubeadm-version]#v}-0" ]] \
  || die "kubeadm runs $etcd_image but hack/tools/etcd-kubeadm pins etcd ${tool[etcd-kubeadm-version]}: update its go.mod"
[[ "${coredns_image##*:}" == "${tool[coredns-version]}" ]] \
  || die "kubeadm runs $coredns_image but hack/build-tools.sh pins CoreDNS ${tool[coredns-version]}: update COREDNS_VERSION"
flannel_image="kubetune.local/flannel:${tool[flannel-version]}"
provisioner_image="kubetune.local/local-path-provisioner:${tool[local-path-version]}"
helper_image="kubetune.local/local-path-helper:$recipe_hash"

work="$(mktemp -d)"
build_container=""
cleanup() {
  [[ -n "$build_container" ]] && "$docker_bin" rm -f -v "$build_container" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

log "1/3 base image (systemd, containerd ${tool[containerd-dir]##*-}, runc, kind's files)"
ctx="$work/base"
mkdir -p "$ctx/files/usr/local/bin" "$ctx/files/usr/local/sbin" "$ctx/files/usr/sbin" "$ctx/files/opt/cni/bin"
cp -r "$kind_module/images/base/files/." "$ctx/files/"
chmod -R u+w "$ctx/files"
cp -r "$here/base/files/." "$ctx/files/"
cp "$here/base/Dockerfile" "$ctx/"
cp "${tool[containerd-dir]}"/{containerd,ctr,containerd-shim-runc-v2} "${tool[crictl]}" "$ctx/files/usr/local/bin/"
cp "${tool[runc]}" "$ctx/files/usr/sbin/runc"
cp "$("$root/hack/go-tool.sh" runc-capfilter)" "$ctx/files/usr/local/bin/runc-capfilter"
cp "${tool[cni-plugins-dir]}"/{host-local,loopback,ptp,portmap} "$ctx/files/opt/cni/bin/"
# containerd's sandbox (pause) image is the one kubeadm names, so one pause image serves both.
sed -i "s|sandbox_image = .*|sandbox_image = \"$pause_image\"|" "$ctx/files/etc/containerd/config.toml"
base_image="kubetune.local/kind-base:$recipe_hash"
docker build -q --build-arg BASE_IMAGE="$base_layer" -t "$base_image" "$ctx" >/dev/null \
  || die "the base image build failed (above); it needs the Debian package mirror for apt-get"

log "2/3 images: control plane $version, $etcd_image, $coredns_image, $pause_image, flannel, local-path"
ctx="$work/images"
mkdir -p "$ctx/bin"
cp "$here/images/Dockerfile" "$here/images/iptables-select.sh" "$ctx/"
for bin in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do cp "${tool[$bin]}" "$ctx/bin/"; done
cp "${tool[etcd-kubeadm]}" "$ctx/bin/etcd"
cp "${tool[coredns]}" "${tool[local-path-provisioner]}" "${tool[flanneld]}" "$ctx/bin/"
cp "$(go env GOMODCACHE)/k8s.io/kubernetes@$version/build/pause/linux/pause.c" "$ctx/pause.c" \
  || die "cannot find Kubernetes' pause.c in the module cache (k8s.io/kubernetes@$version)"
images=()
image() {  # TAG TARGET [BUILD-ARG...]
  local tag="$1" target="$2"; shift 2
  docker build -q --target "$target" --build-arg BASE_IMAGE="$base_layer" "${@/#/--build-arg=}" \
    -t "$tag" "$ctx" >/dev/null || die "building $tag (target $target of hack/kind/images/Dockerfile) failed (above)"
  images+=("$tag")
}
for component in kube-apiserver kube-controller-manager kube-scheduler; do
  image "$(kubeadm_image "$component")" static "BINARY=$component"
done
image "$(kubeadm_image kube-proxy)" kube-proxy
image "$etcd_image" static BINARY=etcd
image "$coredns_image" coredns
image "$pause_image" pause "PAUSE_VERSION=${pause_image##*:}"
image "$flannel_image" flannel
image "$provisioner_image" static BINARY=local-path-provisioner
image "$helper_image" local-path-helper

log "3/3 node image $node_image"
build_container="kubetune-node-build-$$"
docker run -d --name "$build_container" --entrypoint=sleep --security-opt seccomp=unconfined \
  "$base_image" infinity >/dev/null
for bin in kubeadm kubelet kubectl; do
  docker cp "${tool[$bin]}" "$build_container:/usr/bin/$bin"
done
in_node() { "$docker_bin" exec -i "$build_container" "$@"; }
in_node sh -c 'chown root:root /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl && chmod 0755 /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl'
echo "$version" | in_node sh -c 'cat > /kind/version'
in_node mkdir -p /kind/manifests
# The default CNI is our flannel manifest, not kind's kindnetd (hack/kind/flannel.yaml).
sed "s|FLANNEL_IMAGE|$flannel_image|g" "$here/flannel.yaml" \
  | in_node sh -c 'cat > /kind/manifests/default-cni.yaml'
python3 "$here/kind_manifests.py" "$kind_module" storage \
    "$(sed -n 's/^const storageProvisionerImage = "\(.*\)"/\1/p' "$kind_module/pkg/build/nodeimage/const_storage.go")=$provisioner_image" \
    "$(sed -n 's/^const storageHelperImage = "\(.*\)"/\1/p' "$kind_module/pkg/build/nodeimage/const_storage.go")=$helper_image" \
  | in_node sh -c 'cat > /kind/manifests/default-storage.yaml'
# Import the images as kind's builder does: containerd runs in the build container, the
# images go in pinned (never garbage-collected) and not unpacked (unpacked on first use).
in_node sh -c 'nohup containerd >/tmp/containerd.log 2>&1 & echo $! >/tmp/containerd.pid'
for _ in $(seq 1 30); do in_node ctr info >/dev/null 2>&1 && break; sleep 1; done
in_node ctr info >/dev/null || die "containerd did not start in the build container: $(in_node cat /tmp/containerd.log | tail -5)"
docker save "${images[@]}" \
  | in_node ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
      --all-platforms --no-unpack --digests - >/dev/null \
  || die "importing the images into the node's containerd failed"
imported="$(in_node ctr --namespace=k8s.io images list -q)"
for tag in "${images[@]}"; do
  grep -qx "$(echo "$tag" | sed 's|^\([^/]*\)$|docker.io/library/\1|; s|^\([^./:]*/[^/]*\)$|docker.io/\1|')" <<<"$imported" \
    || die "$tag is not in the node's containerd after the import (it has: $imported)"
done
# Stop containerd so that its state is consistent when committed. `sleep` is PID 1 here
# and reaps nothing: an exited containerd stays a zombie (state Z), which counts as stopped.
# shellcheck disable=SC2016 # expanded in the build container
in_node sh -c 'pid=$(cat /tmp/containerd.pid); kill "$pid"
  for i in $(seq 1 40); do
    state=$(awk "{print \$3}" "/proc/$pid/stat" 2>/dev/null || echo gone)
    [ "$state" = Z ] || [ "$state" = gone ] && exit 0
    sleep 0.5
  done
  exit 1' || die "containerd in the build container did not stop within 20 s"
in_node rm -f /tmp/containerd.pid
in_node rm -rf /tmp/containerd.log
docker commit \
  --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
  "$build_container" "$node_image" >/dev/null
log "built $node_image in $((SECONDS - started)) s ($(docker image inspect -f '{{.Size}}' "$node_image" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$node_image"
