#!/usr/bin/env bash
# Builds the base runner image offline from Debian packages (debootstrap, no Docker Hub), imports it into
# our dockerd and pushes it to the local registry as $OPSCHAIN_BASE_RUNNER.
# Idempotent: the image carries a digest of its inputs, and nothing is rebuilt while that digest matches.
# Usage: runner-image.sh ensure|inputs-digest
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

runner_src="$STEPRUNNER_ROOT/deploy/runner"
work="$STEPRUNNER_STATE_DIR/runner"
packages=ruby,rake,git,unzip,ca-certificates

inputs_digest() {
  { cat "${BASH_SOURCE[0]}"; echo "$STEPRUNNER_DEBIAN_SUITE $packages $STEPRUNNER_VERSION"
    if [[ -d "$runner_src" ]]; then (cd "$runner_src" && find . -type f | LC_ALL=C sort | xargs -r sha256sum); fi
  } | sha256sum | cut -c1-64
}

# The inputs digest recorded in the registry's copy of the image, or nothing.
published_digest() {
  local repo="${OPSCHAIN_BASE_RUNNER#*/}" tag config
  tag="${repo##*:}"; repo="${repo%:*}"
  config="$(curl -sf -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$STEPRUNNER_REGISTRY_ADDR/v2/$repo/manifests/$tag" | json_field 'j.config.digest')" || return 0
  [[ -n "$config" ]] || return 0
  curl -sf "http://$STEPRUNNER_REGISTRY_ADDR/v2/$repo/blobs/$config" | json_field 'j.config.Labels["org.steprunner.inputs"]' || true
}

# json_field EXPR: prints EXPR of the JSON document j read from stdin (Node is on every machine we run on).
json_field() {
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const j=JSON.parse(s);const v='"$1"';if(v!==undefined)console.log(v)})'
}

build_rootfs() {
  local rootfs="$1"
  rm -rf "$rootfs"; mkdir -p "$rootfs"
  # shellcheck disable=SC2064 # expand now: the trap may fire after this function has returned
  trap "unmount_under '$rootfs'" EXIT # debootstrap mounts proc and sys inside the target
  log "debootstrap $STEPRUNNER_DEBIAN_SUITE (minbase + $packages) from $STEPRUNNER_DEBIAN_MIRROR"
  debootstrap --variant=minbase --include="$packages" "$STEPRUNNER_DEBIAN_SUITE" "$rootfs" "$STEPRUNNER_DEBIAN_MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log: $work/debootstrap.log)"; }
  unmount_under "$rootfs"; trap - EXIT
  chroot "$rootfs" groupadd --gid 10001 opschain
  chroot "$rootfs" useradd --uid 10001 --gid 10001 --home-dir /opt/opschain --no-create-home --shell /bin/bash opschain
  install -d -o 10001 -g 10001 -m 0755 "$rootfs/opt/opschain"
  if [[ -d "$runner_src/bin" ]]; then install -m 0755 "$runner_src"/bin/* "$rootfs/usr/local/bin/"; fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/*
}

ensure() {
  local digest published rootfs
  digest="$(inputs_digest)"
  published="$(published_digest)"
  if [[ "$published" == "$digest" ]]; then log "base runner $OPSCHAIN_BASE_RUNNER is up to date"; return 0; fi
  mkdir -p "$work"
  rootfs="$work/rootfs-$digest"
  [[ -f "$rootfs.done" ]] || { build_rootfs "$rootfs"; touch "$rootfs.done"; }
  log "importing $OPSCHAIN_BASE_RUNNER into dockerd"
  tar -C "$rootfs" --numeric-owner -c . | docker_cli import \
    --change 'USER opschain' --change 'WORKDIR /opt/opschain' \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL org.steprunner.inputs=$digest org.opencontainers.image.version=$STEPRUNNER_VERSION" \
    - "$OPSCHAIN_BASE_RUNNER" >/dev/null
  log "pushing $OPSCHAIN_BASE_RUNNER"
  docker_cli push "$OPSCHAIN_BASE_RUNNER" >/dev/null
  # Keep only the rootfs of the current inputs.
  find "$work" -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$digest*" -exec rm -rf {} +
}

case "${1:-}" in
  ensure) ensure ;;
  inputs-digest) inputs_digest ;;
  *) echo "usage: $0 ensure|inputs-digest" >&2; exit 2 ;;
esac
