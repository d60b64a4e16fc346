# Builds images offline from Debian packages (debootstrap, never Docker Hub) and pushes them straight to the
# local registry (no Docker daemon needed: a standalone buildkitd pulls them from there, and so does dockerd). Sourced by runner-image.sh and service-base-image.sh.
# shellcheck shell=bash

# json_field EXPR: prints EXPR of the JSON document j read from stdin (Node is on every machine we run on).
json_field() {
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{if(!s.trim())return;const j=JSON.parse(s);const v='"$1"';if(v!==undefined)console.log(v)})'
}

# published_inputs REF: the inputs digest recorded in the registry's copy of REF, or nothing.
published_inputs() {
  local repo="${1#*/}" tag config
  tag="${repo##*:}"; repo="${repo%:*}"
  config="$(curl -sf -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$STEPRUNNER_REGISTRY_ADDR/v2/$repo/manifests/$tag" | json_field 'j.config.digest')" || return 0
  [[ -n "$config" ]] || return 0
  curl -sf "http://$STEPRUNNER_REGISTRY_ADDR/v2/$repo/blobs/$config" | json_field 'j.config.Labels["org.steprunner.inputs"]' || true
}

# ensure_debian_image REF PACKAGES INPUTS_DIGEST CONFIGURE_FN [push-rootfs option …]
# Builds REF from debootstrap minbase plus PACKAGES unless the registry's REF already has INPUTS_DIGEST.
# CONFIGURE_FN ROOTFS adjusts the root filesystem before it is imported.
ensure_debian_image() {
  local ref="$1" packages="$2" digest="$3" configure="$4"; shift 4
  if [[ "$(published_inputs "$ref")" == "$digest" ]]; then log "$ref is up to date"; return 0; fi
  local name="${ref#*/}"; name="${name%:*}"
  local images="$STEPRUNNER_STATE_DIR/images/${name//\//-}"
  local work="$images/${digest:0:16}"
  local rootfs="$work/rootfs"
  mkdir -p "$work"
  if [[ ! -f "$work/done" ]]; then
    rm -rf "$rootfs"; mkdir -p "$rootfs"
    # shellcheck disable=SC2064 # expand now: the trap may fire after this function has returned
    trap "unmount_under '$rootfs'" EXIT # debootstrap mounts proc and sys inside the target
    log "debootstrap $STEPRUNNER_DEBIAN_SUITE (minbase + $packages) from $STEPRUNNER_DEBIAN_MIRROR for $ref"
    debootstrap --variant=minbase --include="$packages" "$STEPRUNNER_DEBIAN_SUITE" "$rootfs" "$STEPRUNNER_DEBIAN_MIRROR" \
      >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log: $work/debootstrap.log)"; }
    unmount_under "$rootfs"; trap - EXIT
    "$configure" "$rootfs"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/*
    touch "$work/done"
  fi
  log "pushing $ref"
  node "$STEPRUNNER_ROOT/dist/deploy/local/push-rootfs.js" "$ref" "$rootfs" \
    --label "org.steprunner.inputs=$digest" --label "org.opencontainers.image.version=$STEPRUNNER_VERSION" "$@" >/dev/null
  # Keep only the root filesystem of the current inputs.
  find "$images" -mindepth 1 -maxdepth 1 ! -name "${digest:0:16}" -exec rm -rf {} +
}
