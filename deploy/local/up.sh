#!/usr/bin/env bash
# Brings the whole local stack up on a Debian machine as root: packages, our BuildKit (dockerd's, or a standalone
# buildkitd with STEPRUNNER_BUILDKIT=buildkitd), the registry, the base runner image and the three services. Running it again changes nothing that is already up.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/env.sh"

[[ $EUID -eq 0 ]] || die "run as root: dockerd, runc and overlay mounts need it"
"$here/install.sh"
"$here/build.sh"
"$here/registry.sh" start
"$here/$STEPRUNNER_BUILDKIT.sh" start
"$here/runner-image.sh" ensure
"$here/services.sh" start
