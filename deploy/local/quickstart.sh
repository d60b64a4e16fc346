#!/usr/bin/env bash
# The README's first command: brings the local stack up and shows what it runs on.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
"$here/up.sh"
source "$here/env.sh"
exec node "$STEPRUNNER_ROOT/dist/services/cli/main.js" status
