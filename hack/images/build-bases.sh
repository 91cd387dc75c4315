#!/usr/bin/env bash
# Makes the base images that Dockerfile.operator and Dockerfile.trainer build FROM, locally
# and without an image registry: from the Debian mirror (mmdebstrap, apt) and PyPI only.
#
#   hack/images/build-bases.sh                 make what is missing; print the build args
#   hack/images/build-bases.sh --build-args    print the --build-arg options only (no build)
#
# Users with a registry need none of this: the Dockerfiles' defaults (python:3.11-slim-bookworm,
# ghcr.io/astral-sh/uv) are the usual images, and `docker build` pulls them.
#
# The images, each skipped when present and made by this recipe (label dev.kubetune.recipe):
#   kubetune-base:<suite>          a Debian root: mmdebstrap --variant=minbase | docker import
#   kubetune-python:<py>-<suite>   + Debian's python3.<minor> and ca-certificates (apt)
#   kubetune-uv:<version>          FROM scratch, /uv and /uvx from the PyPI wheel `uv==<version>`
#                                  (the same binaries as ghcr.io/astral-sh/uv:<version>)
# The versions come from the Dockerfiles' ARG defaults (PYTHON_IMAGE, UV_IMAGE), so a pin
# moves in one place. Debian's python3.11 is CPython 3.11, which the lock's cp311 wheels
# (manylinux, glibc >= 2.17; bookworm has 2.36) are built for.
#
# Environment: DOCKER (client; default Debian's /usr/bin/docker), KUBETUNE_IMAGES_CACHE
# (downloaded wheels; default ~/.cache/kubetune/images).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DOCKER="${DOCKER:-$( [[ -x /usr/bin/docker ]] && echo /usr/bin/docker || command -v docker || echo docker)}"
cache="${KUBETUNE_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/images}"
log() { echo "build-bases: $*" >&2; }
die() { echo "build-bases: $*" >&2; exit 1; }

# --- Versions, from the Dockerfiles --------------------------------------------------------
arg_default() {  # arg_default NAME FILE: the default of `ARG NAME=...` in FILE
  sed -n "s/^ARG $1=\(.*\)$/\1/p" "$2" | head -n 1
}
python_image="$(arg_default PYTHON_IMAGE "$root/Dockerfile.operator")"   # python:3.11-slim-bookworm
uv_image="$(arg_default UV_IMAGE "$root/Dockerfile.operator")"           # ghcr.io/astral-sh/uv:0.13.9
[[ "$python_image" =~ ^python:([0-9]+\.[0-9]+)-slim-([a-z]+)$ ]] \
  || die "Dockerfile.operator: ARG PYTHON_IMAGE=$python_image is not python:<major.minor>-slim-<debian suite>"
python_version="${BASH_REMATCH[1]}"
suite="${BASH_REMATCH[2]}"
[[ "$uv_image" =~ :([0-9]+\.[0-9]+\.[0-9]+)$ ]] \
  || die "Dockerfile.operator: ARG UV_IMAGE=$uv_image has no uv version tag"
uv_version="${BASH_REMATCH[1]}"
for dockerfile in Dockerfile.trainer Dockerfile.operator; do
  for arg in PYTHON_IMAGE UV_IMAGE; do
    value="$(arg_default "$arg" "$root/$dockerfile")"
    [[ -z "$value" || "$value" == "$(arg_default "$arg" "$root/Dockerfile.operator")" ]] \
      || die "$dockerfile: ARG $arg=$value differs from Dockerfile.operator's; the images share their bases"
  done
done

BASE="kubetune-base:$suite"
PYTHON="kubetune-python:$python_version-$suite"
UV="kubetune-uv:$uv_version"

build_args() {
  echo "--build-arg PYTHON_IMAGE=$PYTHON --build-arg UV_IMAGE=$UV"
}
if [[ "${1:-}" == "--build-args" ]]; then
  build_args
  exit 0
fi

# The recipe of each image is this script: an edit to it makes them again.
recipe="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
present() {  # present IMAGE [any]: made by this recipe (or, with `any`, present at all)
  local label
  label="$("$DOCKER" image inspect --format '{{ index .Config.Labels "dev.kubetune.recipe" }}' "$1" 2>/dev/null)" \
    || return 1
  [[ "${2:-}" == any || "$label" == "$recipe" ]]
}

build() {  # build LOG_NAME DOCKER_BUILD_ARGS...: BuildKit, its log kept and shown on failure
  local name="$1"; shift
  mkdir -p "$cache/logs"
  if ! DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain "$@" >"$cache/logs/$name.log" 2>&1; then
    tail -n 30 "$cache/logs/$name.log" >&2
    return 1
  fi
}

"$DOCKER" info >/dev/null 2>&1 \
  || die "the Docker engine does not answer ($DOCKER info failed): start it with hack/docker-engine.sh, which says why it cannot"

# --- The Debian root -----------------------------------------------------------------------
# Any image of this name will do (the kind node image may have made it the same way).
if present "$BASE" any; then
  log "$BASE: present"
else
  if ! command -v mmdebstrap >/dev/null; then
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
      die "mmdebstrap is missing: install it (Debian/Ubuntu: apt-get install mmdebstrap) and run again"
    fi
    log "installing mmdebstrap (apt-get)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap; } >&2 \
      || die "apt-get install mmdebstrap failed (see above): the Debian package mirror is needed"
  fi
  log "$BASE: making a Debian $suite root with mmdebstrap (about a minute)"
  start=$SECONDS
  tarball="$(mktemp --suffix=.tar)"
  trap 'rm -f "$tarball"' EXIT
  mmdebstrap --quiet --variant=minbase "$suite" "$tarball" \
    || die "mmdebstrap could not make a Debian $suite root (see above): it needs the Debian mirror (deb.debian.org) and root or user namespaces"
  "$DOCKER" import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL dev.kubetune.recipe=$recipe" \
    "$tarball" "$BASE" >/dev/null || die "docker import of the Debian root failed (see above)"
  rm -f "$tarball"
  log "$BASE: made in $((SECONDS - start)) s"
fi

# --- Python --------------------------------------------------------------------------------
if present "$PYTHON"; then
  log "$PYTHON: present"
else
  log "$PYTHON: installing Debian's python$python_version into $BASE"
  start=$SECONDS
  # The same shape as python:*-slim: an interpreter, certificates, a UTF-8 locale, no pip.
  build python --tag "$PYTHON" --label "dev.kubetune.recipe=$recipe" \
    --build-arg "BASE=$BASE" --build-arg "PYTHON=python$python_version" - <<'EOF' \
    || die "building $PYTHON failed (see above): apt-get in the build needs the Debian mirror"
ARG BASE
FROM ${BASE}
ARG PYTHON
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PYTHON}" ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && "${PYTHON}" --version
ENV LANG=C.UTF-8
CMD ["/bin/bash"]
EOF
  log "$PYTHON: made in $((SECONDS - start)) s"
fi

# --- uv ------------------------------------------------------------------------------------
if present "$UV"; then
  log "$UV: present"
else
  log "$UV: taking uv $uv_version from its PyPI wheel"
  mkdir -p "$cache"
  wheel_dir="$cache/uv-$uv_version"
  if [[ ! -x "$wheel_dir/uv" ]]; then
    # The wheel's address and sha256 from PyPI's JSON API; the download is checked against it.
    python3 - "$uv_version" "$wheel_dir" <<'PY' || die "downloading the uv $uv_version wheel from PyPI failed (see above): PyPI (pypi.org, files.pythonhosted.org) must be reachable"
import hashlib, io, json, pathlib, sys, urllib.request, zipfile

version, target = sys.argv[1], pathlib.Path(sys.argv[2])
# PyPI's simple index in its JSON form (PEP 691), as installers read it.
request = urllib.request.Request(
    "https://pypi.org/simple/uv/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
)
with urllib.request.urlopen(request, timeout=60) as r:
    files = json.load(r)["files"]
filename = f"uv-{version}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
wheels = [f for f in files if f["filename"] == filename]
if not wheels:
    sys.exit(f"PyPI has no {filename}")
wheel = wheels[0]
with urllib.request.urlopen(wheel["url"], timeout=300) as r:
    data = r.read()
digest = hashlib.sha256(data).hexdigest()
if digest != wheel["hashes"]["sha256"]:
    sys.exit(f"{filename}: sha256 {digest}, PyPI says {wheel['hashes']['sha256']}")
partial = target.with_name(target.name + ".partial")
partial.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(io.BytesIO(data)) as z:
    for name in ("uv", "uvx"):
        (member,) = [m for m in z.namelist() if m.endswith(f".data/scripts/{name}")]
        path = partial / name
        path.write_bytes(z.read(member))
        path.chmod(0o755)
partial.rename(target)
print(f"{wheel['filename']} sha256 {digest}", file=sys.stderr)
PY
  fi
  "$wheel_dir/uv" --version | grep -qx "uv $uv_version.*" \
    || die "$wheel_dir/uv is not uv $uv_version: remove $wheel_dir and run again"
  printf 'FROM scratch\nCOPY uv uvx /\n' > "$wheel_dir/Dockerfile"
  build uv --tag "$UV" --label "dev.kubetune.recipe=$recipe" "$wheel_dir" || die "building $UV failed (see above)"
  log "$UV: made"
fi

build_args
