#!/usr/bin/env bash
# Stops what up.sh started, in reverse order, and checks that no process, mount or socket of ours is left.
# The state directory's data (images, registry storage, caches) stays for the next start.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/env.sh"

"$here/services.sh" stop
"$here/registry.sh" stop
# Whichever BuildKit ran (the setting may have changed since the stack came up).
"$here/buildkitd.sh" stop
"$here/dockerd.sh" stop

leftovers="$("$here/leftovers.sh")" || true
if [[ -n "$leftovers" ]]; then
  log "left behind after stopping:"
  printf '%s\n' "$leftovers" >&2
  exit 1
fi
log "stack stopped; nothing of ours left running"
