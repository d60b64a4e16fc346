#!/usr/bin/env bash
# Prints every process, mount and socket of the local stack that is still there; prints nothing when clean.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# Processes started from our state directory or our build (dockerd, its containerd and shims, the registry, services).
for pid in $(pgrep -f "$STEPRUNNER_STATE_DIR/|$STEPRUNNER_ROOT/dist/services/" || true); do
  [[ "$pid" == "$$" || "$pid" == "$PPID" ]] && continue
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || continue
  [[ "$cmd" == *leftovers.sh* || -z "$cmd" ]] && continue
  echo "process $pid: $cmd"
done
awk -v root="$STEPRUNNER_STATE_DIR" '$2 == root || index($2, root "/") == 1 { print "mount " $2 " (" $3 ")" }' /proc/mounts
if [[ -d "$STEPRUNNER_RUN_DIR" ]]; then
  find "$STEPRUNNER_RUN_DIR" -type s -printf 'socket %p\n'
fi
