#!/usr/bin/env bash
# The base of steprunner's own service images: Debian minbase with git (context-service), runc (step-service)
# and ca-certificates; the services' Dockerfiles in deploy/images add Node.js and steprunner itself.
# Usage: service-base-image.sh ensure|inputs-digest
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/env.sh"
source "$here/debian-image.sh"

: "${STEPRUNNER_SERVICE_BASE:=$STEPRUNNER_REGISTRY_ADDR/steprunner/service-base:$STEPRUNNER_VERSION}"
packages=git,runc,ca-certificates,curl

inputs_digest() {
  { cat "${BASH_SOURCE[0]}" "$here/debian-image.sh"; echo "$STEPRUNNER_DEBIAN_SUITE $packages $STEPRUNNER_VERSION"; } | sha256sum | cut -c1-64
}

configure_service_base() {
  install -d -m 0755 "$1/opt/steprunner" "$1/var/lib/steprunner"
}

case "${1:-}" in
  ensure)
    ensure_debian_image "$STEPRUNNER_SERVICE_BASE" "$packages" "$(inputs_digest)" configure_service_base \
      --workdir /opt/steprunner --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    ;;
  inputs-digest) inputs_digest ;;
  *) echo "usage: $0 ensure|inputs-digest" >&2; exit 2 ;;
esac
