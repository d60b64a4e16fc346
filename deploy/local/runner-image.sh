#!/usr/bin/env bash
# The base runner image (OPSCHAIN_BASE_RUNNER): Debian minbase with Ruby, Rake, git and unzip, the step entry
# of deploy/runner/bin, and the user opschain (uid/gid 10001) owning /opt/opschain, where the repository goes.
# Idempotent: it is rebuilt only when its inputs (this script, deploy/runner, the packages) change.
# Usage: runner-image.sh ensure|inputs-digest
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/env.sh"
source "$here/debian-image.sh"

runner_src="$STEPRUNNER_ROOT/deploy/runner"
packages=ruby,rake,git,unzip,ca-certificates

inputs_digest() {
  { cat "${BASH_SOURCE[0]}" "$here/debian-image.sh"; echo "$STEPRUNNER_DEBIAN_SUITE $packages $STEPRUNNER_VERSION"
    if [[ -d "$runner_src" ]]; then (cd "$runner_src" && find . -type f | LC_ALL=C sort | xargs -r sha256sum); fi
  } | sha256sum | cut -c1-64
}

configure_runner() {
  local rootfs="$1"
  chroot "$rootfs" groupadd --gid 10001 opschain
  chroot "$rootfs" useradd --uid 10001 --gid 10001 --home-dir /opt/opschain --no-create-home --shell /bin/bash opschain
  install -d -o 10001 -g 10001 -m 0755 "$rootfs/opt/opschain"
  if [[ -d "$runner_src/bin" ]]; then install -m 0755 "$runner_src"/bin/* "$rootfs/usr/local/bin/"; fi
}

case "${1:-}" in
  ensure)
    ensure_debian_image "$OPSCHAIN_BASE_RUNNER" "$packages" "$(inputs_digest)" configure_runner \
      --user opschain --workdir /opt/opschain --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    ;;
  inputs-digest) inputs_digest ;;
  *) echo "usage: $0 ensure|inputs-digest" >&2; exit 2 ;;
esac
