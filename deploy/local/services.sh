#!/usr/bin/env bash
# The three steprunner services, each its own process on its own address.
# Usage: services.sh start|stop|status
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

services=(context-service image-service step-service)

address_of() {
  case "$1" in
    context-service) echo "$STEPRUNNER_CONTEXT_ADDR" ;;
    image-service) echo "$STEPRUNNER_IMAGE_ADDR" ;;
    step-service) echo "$STEPRUNNER_STEP_ADDR" ;;
  esac
}

# Asks the service's gRPC health check over the Connect protocol (HTTP/1.1 POST with JSON); over TLS, with
# the client's CA and certificate, when the settings turn TLS on.
serving() {
  local address scheme=http tls=()
  address="$(address_of "$1")"
  if [[ -n "${STEPRUNNER_CLIENT_TLS_CA:-}" ]]; then
    scheme=https; tls=(--cacert "$STEPRUNNER_CLIENT_TLS_CA")
    [[ -n "${STEPRUNNER_CLIENT_TLS_CERT:-}" ]] && tls+=(--cert "$STEPRUNNER_CLIENT_TLS_CERT" --key "$STEPRUNNER_CLIENT_TLS_KEY")
  fi
  local target=("$scheme://$address/grpc.health.v1.Health/Check")
  if [[ "$address" == unix:* ]]; then target=(--unix-socket "${address#unix:}" "$scheme://localhost/grpc.health.v1.Health/Check"); fi
  curl -sf --max-time 3 "${tls[@]}" -X POST -H 'content-type: application/json' -d '{}' "${target[@]}" | grep -q '"SERVING"'
}

case "${1:-}" in
  start)
    [[ -f "$STEPRUNNER_ROOT/dist/services/context-service/main.js" ]] || die "steprunner is not built; run npm run build"
    for service in "${services[@]}"; do
      if daemon_running "$service" && serving "$service"; then log "$service already running"; continue; fi
      stop_daemon "$service" 5
      start_daemon "$service" "$STEPRUNNER_STATE_DIR/logs/$service.log" node "$STEPRUNNER_ROOT/dist/services/$service/main.js"
    done
    for service in "${services[@]}"; do
      wait_for "$service" 30 serving "$service"
      log "$service serving on $(address_of "$service")"
    done
    ;;
  stop)
    for service in "${services[@]}"; do stop_daemon "$service" 15; done
    ;;
  status)
    status=0
    for service in "${services[@]}"; do
      if daemon_running "$service" && serving "$service"; then echo "$service serving on $(address_of "$service")"
      else echo "$service stopped"; status=1; fi
    done
    exit $status
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
