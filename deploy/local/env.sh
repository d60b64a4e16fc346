# Settings shared by the local stack scripts. Every value can be overridden from the environment.
# shellcheck shell=bash
STEPRUNNER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STEPRUNNER_VERSION="$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$STEPRUNNER_ROOT/package.json")"
: "${STEPRUNNER_STATE_DIR:=/var/lib/steprunner}"
: "${STEPRUNNER_RUN_DIR:=$STEPRUNNER_STATE_DIR/run}"
: "${STEPRUNNER_REGISTRY_ADDR:=127.0.0.1:5000}"
: "${STEPRUNNER_DEBIAN_MIRROR:=http://deb.debian.org/debian}"
: "${STEPRUNNER_DEBIAN_SUITE:=bookworm}"
: "${OPSCHAIN_BASE_RUNNER:=$STEPRUNNER_REGISTRY_ADDR/steprunner/runner:$STEPRUNNER_VERSION}"
: "${STEPRUNNER_CONTEXT_ADDR:=127.0.0.1:7701}"
: "${STEPRUNNER_IMAGE_ADDR:=127.0.0.1:7702}"
: "${STEPRUNNER_STEP_ADDR:=127.0.0.1:7703}"
# Which BuildKit the stack runs: the one inside Debian's dockerd, or a standalone buildkitd (STEPRUNNER_BUILDKITD_BIN).
: "${STEPRUNNER_BUILDKIT:=dockerd}"
DOCKER_SOCK="$STEPRUNNER_RUN_DIR/docker.sock"
BUILDKITD_SOCK="$STEPRUNNER_RUN_DIR/buildkitd.sock"
if [[ "$STEPRUNNER_BUILDKIT" == buildkitd ]]; then
  : "${STEPRUNNER_BUILDKIT_ADDR:=unix://$BUILDKITD_SOCK}"
else
  : "${STEPRUNNER_BUILDKIT_ADDR:=docker-unix://$DOCKER_SOCK}"
fi
export STEPRUNNER_ROOT STEPRUNNER_VERSION STEPRUNNER_STATE_DIR STEPRUNNER_RUN_DIR STEPRUNNER_REGISTRY_ADDR \
  OPSCHAIN_BASE_RUNNER STEPRUNNER_CONTEXT_ADDR STEPRUNNER_IMAGE_ADDR STEPRUNNER_STEP_ADDR STEPRUNNER_BUILDKIT \
  STEPRUNNER_BUILDKIT_ADDR

# Debian's 20.10 client matches the daemon; /usr/local/bin/docker may be a newer one that needs buildx.
docker_cli() { /usr/bin/docker --host "unix://$DOCKER_SOCK" "$@"; }

log() { printf '[steprunner] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# start_daemon NAME LOGFILE CMD...: runs CMD in its own session, remembering its pid in the run dir.
start_daemon() {
  local name="$1" logfile="$2"; shift 2
  mkdir -p "$STEPRUNNER_RUN_DIR" "$(dirname "$logfile")"
  setsid "$@" >>"$logfile" 2>&1 </dev/null &
  echo $! >"$STEPRUNNER_RUN_DIR/$name.pid"
}

# daemon_running NAME: true when the process recorded for NAME is alive.
daemon_running() {
  local pidfile="$STEPRUNNER_RUN_DIR/$1.pid"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# stop_daemon NAME [GRACE_SECONDS]: TERM, then KILL after the grace period; only the recorded process group.
stop_daemon() {
  local name="$1" grace="${2:-20}" pidfile="$STEPRUNNER_RUN_DIR/$1.pid" pid
  [[ -f "$pidfile" ]] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((grace * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in ${grace}s; killing its process group"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

# unmount_under DIR: lazily unmounts everything mounted below DIR (and DIR itself), deepest first.
unmount_under() {
  local target="${1%/}" mnt
  for mnt in $(awk -v t="$target" '$2 == t || index($2, t "/") == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$mnt" || true
  done
}

# wait_for DESCRIPTION SECONDS CMD...: polls CMD until it succeeds.
wait_for() {
  local what="$1" seconds="$2"; shift 2
  for _ in $(seq $((seconds * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up within ${seconds}s"
}

[[ "$STEPRUNNER_BUILDKIT" == dockerd || "$STEPRUNNER_BUILDKIT" == buildkitd ]] ||
  die "STEPRUNNER_BUILDKIT must be dockerd or buildkitd, got $STEPRUNNER_BUILDKIT"
