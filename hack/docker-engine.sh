#!/usr/bin/env bash
# Makes sure a Docker engine runs that can start privileged containers (kind's nodes are
# privileged containers), installing and starting one where this script may.
#
#   hack/docker-engine.sh          ensure it runs; print DOCKER=<client> on stdout
#   hack/docker-engine.sh --stop   stop the engine if this script started it
#   hack/docker-engine.sh --clear-stale-state   only remove what a killed engine left behind
#
# 1. An engine that already answers (`docker info`) is used as it is, unless it cannot
#    run a privileged container, which is then said in words.
# 2. Otherwise, as root on Debian/Ubuntu, Debian's docker.io package is installed
#    (apt-get) and dockerd is started in the background, its log in $state/dockerd.log.
# 3. Where this machine's capability bounding set lacks capabilities that a privileged
#    container asks for (seen on sandboxed CI machines: CAP_SYS_RESOURCE), runc fails
#    with "unable to apply caps". Then a small OCI-runtime wrapper
#    (hack/tools/runc-capfilter) is built and made dockerd's default runtime; it drops
#    the capabilities the machine cannot grant and runs runc. Where the bounding set is
#    complete, the wrapper is not installed.
# 4. Before dockerd starts, what an engine killed without shutting down left behind is
#    cleared (a machine or session that ended under it): its pid files. dockerd trusts
#    its containerd's pid file; when an unrelated process has since taken that pid, the
#    new dockerd waits for a containerd that does not exist and gives up ("containerd is
#    still running" ... "timeout waiting for containerd to start"). This is what failed CI.
#
# The client is Debian's /usr/bin/docker where it exists: a newer `docker` earlier on
# PATH may want the buildx plugin for BuildKit, which Debian's client has built in.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${KUBETUNE_DOCKER_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune/docker}"
# dockerd's defaults; settable so that the stale-state rule can be tested without root.
exec_root="${KUBETUNE_DOCKER_EXEC_ROOT:-/var/run/docker}"
dockerd_pidfile="${KUBETUNE_DOCKERD_PIDFILE:-/var/run/docker.pid}"
mkdir -p "$state"
log() { echo "docker-engine: $*" >&2; }
die() { echo "docker-engine: $*" >&2; exit 1; }

client() {
  if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; else command -v docker || true; fi
}

bounding_set_incomplete() {
  # CAP_SYS_RESOURCE is bit 24; the capabilities a privileged container asks for are
  # all that the kernel knows (cap_last_cap).
  local last bnd
  last=$(cat /proc/sys/kernel/cap_last_cap 2>/dev/null || echo 40)
  bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  (( (16#$bnd & ((1 << (last + 1)) - 1)) != ((1 << (last + 1)) - 1) ))
}

# Prints the command name of a live process, nothing for a dead one.
process_name() { cat "/proc/$1/comm" 2>/dev/null || true; }

clear_stale_state() {
  local pidfile=$1 expected=$2 socket=$3 pid name
  [[ -f "$pidfile" ]] || return 0
  pid=$(tr -dc '0-9' < "$pidfile")
  name=""
  if [[ -n "$pid" ]]; then name=$(process_name "$pid"); fi
  if [[ "$name" != "$expected" ]]; then
    log "removing $pidfile: it names pid ${pid:-?}, which is ${name:-not running}, not $expected (left by an engine that was killed)"
    rm -f "$pidfile"
  elif [[ -n "$socket" && ! -S "$socket" ]]; then
    # A containerd whose dockerd died and whose socket is gone serves nobody.
    log "stopping $expected (pid $pid): it has no socket at $socket (left by an engine that was killed)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do [[ -n "$(process_name "$pid")" ]] || break; sleep 0.5; done
    rm -f "$pidfile"
  fi
}

clear_stale_engine_state() {
  clear_stale_state "$dockerd_pidfile" dockerd ""
  clear_stale_state "$exec_root/containerd/containerd.pid" containerd "$exec_root/containerd/containerd.sock"
}

if [[ "${1:-}" == "--clear-stale-state" ]]; then
  clear_stale_engine_state
  exit 0
fi

if [[ "${1:-}" == "--stop" ]]; then
  if [[ -f "$state/dockerd.pid" ]]; then
    pid=$(cat "$state/dockerd.pid")
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping dockerd (pid $pid), which this script started"
      kill "$pid"
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$state/dockerd.pid"
  fi
  exit 0
fi

docker_bin="$(client)"
if [[ -n "$docker_bin" ]] && "$docker_bin" info >/dev/null 2>&1; then
  log "an engine is running"
else
  if ! command -v dockerd >/dev/null; then
    [[ $(id -u) == 0 ]] || die "no Docker engine runs and this is not root: install Docker (Debian/Ubuntu: apt-get install docker.io), start it, and run again; or opt out with KIND=0"
    command -v apt-get >/dev/null || die "no Docker engine runs and apt-get is missing: install a Docker engine for this system and start it; or opt out with KIND=0"
    log "installing Debian's docker.io (apt-get)"
    apt-get update -qq >&2 || die "apt-get update failed: the Debian package mirror is needed to install docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >&2 \
      || die "apt-get install docker.io failed (see above)"
  fi
  [[ $(id -u) == 0 ]] || die "dockerd is installed but not running, and starting it needs root: start the Docker service and run again"
  docker_bin="$(client)"

  if bounding_set_incomplete; then
    log "this machine's capability bounding set is incomplete: privileged containers need the runc-capfilter wrapper"
    wrapper=/usr/local/bin/runc-capfilter
    (cd "$here/tools/runc-capfilter" && CGO_ENABLED=0 go build -o "$state/runc-capfilter" .) \
      || die "building hack/tools/runc-capfilter failed (needs Go)"
    install -m 0755 "$state/runc-capfilter" "$wrapper"
    mkdir -p /etc/docker
    python3 - "$wrapper" <<'PY'
import json, pathlib, sys
path = pathlib.Path("/etc/docker/daemon.json")
config = json.loads(path.read_text()) if path.exists() and path.read_text().strip() else {}
config.setdefault("runtimes", {})["capfilter"] = {"path": sys.argv[1]}
config["default-runtime"] = "capfilter"
path.write_text(json.dumps(config, indent=2) + "\n")
PY
  fi

  clear_stale_engine_state
  log "starting dockerd (log: $state/dockerd.log)"
  # setsid: dockerd outlives this script and the make target that ran it.
  setsid dockerd >"$state/dockerd.log" 2>&1 < /dev/null &
  echo $! > "$state/dockerd.pid"
  for _ in $(seq 1 90); do
    "$docker_bin" info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! "$docker_bin" info >/dev/null 2>&1; then
    # gRPC's reconnect chatter ("[core]") buries dockerd's own words; show those.
    grep -v '\[core\]' "$state/dockerd.log" | tail -30 >&2
    die "dockerd did not answer within 90 s (its log, without gRPC's reconnect lines, is above)"
  fi
fi

echo "DOCKER=$docker_bin"
