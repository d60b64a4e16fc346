#!/usr/bin/env bash
# dockerd from Debian's docker.io, with its embedded BuildKit: our BuildKit.
# Everything it owns lives under the state directory; there is no bridge, so builds use network none or host.
# Usage: dockerd.sh start|stop|status
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

data_root="$STEPRUNNER_STATE_DIR/docker"
: "${STEPRUNNER_DOCKERD_BUILD_CACHE_KEEP_BYTES:=10000000000}"
exec_root="$STEPRUNNER_RUN_DIR/docker-exec"

answering() { curl -sf --unix-socket "$DOCKER_SOCK" http://docker/_ping; }

# A RUN that dockerd's stop (or crash) interrupted leaves its bundle and hosts file in BuildKit's executor
# directory, and dockerd never removes them; with dockerd stopped, nothing there is in use.
remove_interrupted_build_jobs() {
  find "$data_root/buildkit/executor" -mindepth 1 -maxdepth 1 ! -name resolv.conf ! -name runc-log.json -exec rm -rf {} + 2>/dev/null || true
}

case "${1:-}" in
  start)
    if daemon_running dockerd && answering >/dev/null; then log "dockerd already running"; exit 0; fi
    command -v dockerd >/dev/null || die "dockerd is not installed; run deploy/local/install.sh"
    unmount_under "$data_root/buildkit/executor"
    remove_interrupted_build_jobs
    mkdir -p "$data_root" "$exec_root"
    # A config file of our own keeps a host-wide /etc/docker/daemon.json from changing our daemon. It turns on
    # the garbage collection of BuildKit's cache, which dockerd leaves off unless told: without it the cache of
    # every build ever made stays on disk.
    printf '{"builder": {"gc": {"enabled": true, "defaultKeepStorage": "%s"}}}\n' "$STEPRUNNER_DOCKERD_BUILD_CACHE_KEEP_BYTES" \
      >"$STEPRUNNER_RUN_DIR/dockerd.json"
    start_daemon dockerd "$STEPRUNNER_STATE_DIR/logs/dockerd.log" \
      dockerd --config-file "$STEPRUNNER_RUN_DIR/dockerd.json" \
        --data-root "$data_root" --exec-root "$exec_root" \
        --pidfile "$exec_root/dockerd.pid" --host "unix://$DOCKER_SOCK" \
        --bridge=none --iptables=false --ip-masq=false --ip6tables=false \
        --storage-driver overlay2
    wait_for dockerd 60 answering
    log "dockerd answering on $DOCKER_SOCK"
    ;;
  stop)
    stop_daemon dockerd 30
    # dockerd's own containerd leaves its sockets behind, and a daemon that died leaves its mounts.
    unmount_under "$exec_root"
    unmount_under "$data_root"
    remove_interrupted_build_jobs
    rm -rf "$exec_root"
    rm -f "$DOCKER_SOCK" "$STEPRUNNER_RUN_DIR/dockerd.json"
    ;;
  status)
    daemon_running dockerd && answering >/dev/null && echo "dockerd running on $DOCKER_SOCK" || { echo "dockerd stopped"; exit 1; }
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
