#!/usr/bin/env bash
# Builds kubetune's images with BuildKit from Dockerfile.operator and Dockerfile.trainer.
#
#   hack/images/build.sh [operator] [trainer]    (none named: both; `make images`)
#
# Environment:
#   TAG=dev               the tag: kubetune-operator:$TAG, kubetune-trainer:$TAG
#   IMAGE_BASES=local     bases made here without a registry (hack/images/build-bases.sh);
#                         IMAGE_BASES=registry uses the Dockerfiles' defaults, pulled as usual
#   DOCKER                the client (default Debian's /usr/bin/docker: BuildKit built in)
#   NO_CACHE=1            a cold build: no layer cache (the uv cache mount stays; clear it
#                         with `docker builder prune --filter type=exec.cachemount`)
#   BUILD_ARGS            more `docker build` options, e.g. "--build-arg HTTPS_PROXY=..."
#
# Docker's layer cache makes a rebuild after a code change redo the last layers only (the
# locked dependencies are installed in a layer of their own), and the uv cache (RUN
# --mount=type=cache) keeps downloaded wheels across builds that change the lock. Each
# build's log is kept in ~/.cache/kubetune/images/logs/. The engine is started (or said
# why not) by hack/docker-engine.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
TAG="${TAG:-dev}"
IMAGE_BASES="${IMAGE_BASES:-local}"
cache="${KUBETUNE_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/images}"
log() { echo "images: $*" >&2; }
die() { echo "images: $*" >&2; exit 1; }

images=("$@")
[[ ${#images[@]} -gt 0 ]] || images=(operator trainer)
for image in "${images[@]}"; do
  [[ "$image" == operator || "$image" == trainer ]] || die "unknown image '$image': operator or trainer"
done

case "$IMAGE_BASES" in
  local | registry) ;;
  *) die "IMAGE_BASES=$IMAGE_BASES: local or registry" ;;
esac

engine="$("$here/../docker-engine.sh")" \
  || die "no Docker engine: hack/docker-engine.sh could not start one (its reason is above). Building the images needs one; see docs/install.md"
DOCKER="${DOCKER:-${engine#DOCKER=}}"
export DOCKER

base_args=()
case "$IMAGE_BASES" in
  local)
    # shellcheck disable=SC2207  # the script prints plain --build-arg words, no spaces inside
    base_args=($("$here/build-bases.sh")) \
      || die "the local base images could not be made (hack/images/build-bases.sh said why above)"
    ;;
  registry) log "bases from the registry: the Dockerfiles' defaults" ;;
esac
# shellcheck disable=SC2206  # BUILD_ARGS is split into words as a command line would be
extra_args=(${BUILD_ARGS:-})

explain() {  # explain LOG: what a failed build's log says, in words, with what to try
  if grep -qE "pull access denied|failed to resolve source metadata|failed to authorize|failed to do request|not found: manifest unknown" "$1"; then
    echo "a base image could not be found locally or pulled: without a registry, build with IMAGE_BASES=local (the default), which makes the bases with hack/images/build-bases.sh"
  elif grep -qiE "no space left on device" "$1"; then
    echo "the disk is full: free space (docker system df; docker builder prune) and run again"
  elif grep -qE "Failed to (download|fetch)|error sending request|dns error|Connection (refused|reset)|timed out" "$1"; then
    echo "uv could not download a locked package: PyPI (pypi.org, files.pythonhosted.org) must be reachable from the build's containers; run again when it is (the uv cache keeps what was fetched)"
  elif grep -qE "lockfile needs to be updated|The lockfile at .* needs to be updated" "$1"; then
    echo "uv.lock does not match pyproject.toml: run \`uv lock\` and commit the result"
  else
    echo "see the log for the failing step"
  fi
}

# The build downloads from PyPI with the trust store of this machine (which may hold a
# TLS-inspecting proxy's authority): a BuildKit secret, mounted for the download steps only.
ca_bundle="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
secret_args=()
[[ -s "$ca_bundle" ]] && secret_args=(--secret "id=ca-certificates,src=$ca_bundle")

mkdir -p "$cache/logs"
for image in "${images[@]}"; do
  name="kubetune-$image:$TAG"
  dockerfile="Dockerfile.$image"
  build_log="$cache/logs/$image.log"
  no_cache=()
  [[ "${NO_CACHE:-}" == 1 ]] && no_cache=(--no-cache)
  log "building $name from $dockerfile (log: $build_log)"
  previous="$("$DOCKER" image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)"
  start=$SECONDS
  # On a terminal the build's steps show as they run; otherwise they go to the log only.
  out=/dev/null
  [[ -t 2 ]] && out=/dev/stderr
  if ! DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain "${no_cache[@]}" "${base_args[@]}" "${secret_args[@]}" "${extra_args[@]}" \
      --file "$root/$dockerfile" --tag "$name" "$root" 2>&1 | tee "$build_log" >"$out"; then
    tail -n 40 "$build_log" >&2
    die "building $name ($dockerfile) failed: $(explain "$build_log"). Full log: $build_log"
  fi
  size="$("$DOCKER" image inspect --format '{{.Size}}' "$name")"
  log "$name built in $((SECONDS - start)) s, $((size / 1000000)) MB"
  # The image this tag named before is left without a name: remove it (its layers that
  # the new one shares stay). Kept where a container or another tag still uses it.
  current="$("$DOCKER" image inspect --format '{{.Id}}' "$name")"
  if [[ -n "$previous" && "$previous" != "$current" ]]; then
    "$DOCKER" rmi "$previous" >/dev/null 2>&1 || true
  fi
done
