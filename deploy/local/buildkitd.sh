#!/usr/bin/env bash
# A standalone buildkitd (STEPRUNNER_BUILDKIT=buildkitd): upstream BuildKit's daemon with its OCI worker (runc),
# host network for RUN (there is no bridge), our registry over plain HTTP. The binary is STEPRUNNER_BUILDKITD_BIN:
# from your distribution, upstream's release binaries or the moby/buildkit image (docs/operations.md).
# Usage: buildkitd.sh start|stop|status
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

root="$STEPRUNNER_STATE_DIR/buildkitd"
config="$STEPRUNNER_RUN_DIR/buildkitd.toml"
# buildkitd's temporary mounts (a snapshot it reads an image's users from, say) go in its TMPDIR: one of ours,
# so that what a killed buildkitd left mounted there is found and unmounted, not left in the host's /tmp.
tmp="$STEPRUNNER_RUN_DIR/buildkitd-tmp"
: "${STEPRUNNER_BUILDKITD_KEEP_BYTES:=10000000000}"

# Answering: it lists a worker over its Control API (with our own client, as the image-service will).
answering() {
  [[ -S "$BUILDKITD_SOCK" ]] && node --input-type=module -e '
    const { BuildKitClient } = await import(process.argv[1]);
    const client = new BuildKitClient(process.argv[2]);
    try { process.exitCode = (await client.listWorkers(AbortSignal.timeout(2000))).length > 0 ? 0 : 1; } finally { client.close(); }
  ' "$STEPRUNNER_ROOT/dist/services/image-service/buildkit/client.js" "unix://$BUILDKITD_SOCK" >/dev/null 2>&1
}

# RUNs a stop (or crash) interrupted leave their bundles in the executor directory; nothing there is in use
# while the daemon is stopped.
remove_interrupted_build_jobs() {
  rm -rf "$root/runc-overlayfs/executor" 2>/dev/null || true
}

case "${1:-}" in
  start)
    if daemon_running buildkitd && answering; then log "buildkitd already running"; exit 0; fi
    [[ -n "${STEPRUNNER_BUILDKITD_BIN:-}" ]] ||
      die "STEPRUNNER_BUILDKIT=buildkitd needs STEPRUNNER_BUILDKITD_BIN, the path of a buildkitd binary (your distribution's, upstream's release or the moby/buildkit image's)"
    [[ -x "$STEPRUNNER_BUILDKITD_BIN" ]] || die "STEPRUNNER_BUILDKITD_BIN=$STEPRUNNER_BUILDKITD_BIN is not an executable file"
    command -v runc >/dev/null || die "buildkitd's OCI worker needs runc; run deploy/local/install.sh"
    stop_daemon buildkitd 5
    unmount_under "$root"
    unmount_under "$tmp"
    remove_interrupted_build_jobs
    rm -rf "$tmp"
    mkdir -p "$root" "$STEPRUNNER_RUN_DIR" "$tmp"
    cat >"$config" <<TOML
[registry."$STEPRUNNER_REGISTRY_ADDR"]
  http = true
[worker.oci]
  gc = true
  gckeepstorage = $STEPRUNNER_BUILDKITD_KEEP_BYTES
TOML
    rm -f "$BUILDKITD_SOCK"
    start_daemon buildkitd "$STEPRUNNER_STATE_DIR/logs/buildkitd.log" \
      env TMPDIR="$tmp" "$STEPRUNNER_BUILDKITD_BIN" --root "$root" --addr "unix://$BUILDKITD_SOCK" --config "$config" \
        --containerd-worker=false --oci-worker=true --oci-worker-net=host \
        --allow-insecure-entitlement network.host
    wait_for buildkitd 60 answering
    log "buildkitd answering on $BUILDKITD_SOCK"
    ;;
  stop)
    stop_daemon buildkitd 15
    unmount_under "$root"
    unmount_under "$tmp"
    remove_interrupted_build_jobs
    rm -rf "$tmp"
    rm -f "$BUILDKITD_SOCK" "$config"
    ;;
  status)
    daemon_running buildkitd && answering && echo "buildkitd running on $BUILDKITD_SOCK" || { echo "buildkitd stopped"; exit 1; }
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
