#!/usr/bin/env bash
# Debian's docker-registry (distribution 2.8), on loopback only, storing under the state directory.
# Usage: registry.sh start|stop|status|gc
# gc reclaims the blobs of deleted manifests (the image-service deletes expired step images); the registry
# is stopped for it, as distribution's garbage collector requires.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

storage="$STEPRUNNER_STATE_DIR/registry"
config="$STEPRUNNER_RUN_DIR/registry.yml"

answering() { curl -sf "http://$STEPRUNNER_REGISTRY_ADDR/v2/"; }

case "${1:-}" in
  start)
    if daemon_running registry && answering >/dev/null; then log "registry already running"; exit 0; fi
    [[ "$STEPRUNNER_REGISTRY_ADDR" == 127.* || "$STEPRUNNER_REGISTRY_ADDR" == localhost:* ]] ||
      die "STEPRUNNER_REGISTRY_ADDR must be a loopback address, got $STEPRUNNER_REGISTRY_ADDR"
    mkdir -p "$storage" "$STEPRUNNER_RUN_DIR"
    cat >"$config" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $storage
  delete:
    enabled: true
http:
  addr: $STEPRUNNER_REGISTRY_ADDR
YAML
    start_daemon registry "$STEPRUNNER_STATE_DIR/logs/registry.log" docker-registry serve "$config"
    wait_for registry 30 answering
    log "registry answering on http://$STEPRUNNER_REGISTRY_ADDR"
    ;;
  stop)
    stop_daemon registry 10
    rm -f "$config"
    ;;
  gc)
    was_running=false
    if daemon_running registry; then was_running=true; stop_daemon registry 10; fi
    mkdir -p "$STEPRUNNER_RUN_DIR"
    printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\n' "$storage" >"$STEPRUNNER_RUN_DIR/registry-gc.yml"
    docker-registry garbage-collect --delete-untagged "$STEPRUNNER_RUN_DIR/registry-gc.yml" >>"$STEPRUNNER_STATE_DIR/logs/registry-gc.log" 2>&1 ||
      log "registry garbage collection failed (log: $STEPRUNNER_STATE_DIR/logs/registry-gc.log)"
    rm -f "$STEPRUNNER_RUN_DIR/registry-gc.yml"
    if $was_running; then "$0" start; fi
    ;;
  status)
    daemon_running registry && answering >/dev/null && echo "registry running on $STEPRUNNER_REGISTRY_ADDR" || { echo "registry stopped"; exit 1; }
    ;;
  *) echo "usage: $0 start|stop|status|gc" >&2; exit 2 ;;
esac
