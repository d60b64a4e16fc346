#!/usr/bin/env bash
# Debian's docker-registry (distribution 2.8), on loopback only, storing under the state directory.
# Usage: registry.sh start|stop|status
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
  status)
    daemon_running registry && answering >/dev/null && echo "registry running on $STEPRUNNER_REGISTRY_ADDR" || { echo "registry stopped"; exit 1; }
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
