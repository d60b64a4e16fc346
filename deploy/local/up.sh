#!/usr/bin/env bash
# Brings the whole local stack up on a Debian machine as root: packages, dockerd (our BuildKit), the registry,
# the base runner image and the three services. Running it again changes nothing that is already up.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/env.sh"

[[ $EUID -eq 0 ]] || die "run as root: dockerd, runc and overlay mounts need it"
"$here/install.sh"
"$here/build.sh"
"$here/dockerd.sh" start
"$here/registry.sh" start
"$here/runner-image.sh" ensure
"$here/services.sh" start
