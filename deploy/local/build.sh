#!/usr/bin/env bash
# Installs the pinned npm dependencies (only when the lockfile changed) and compiles steprunner.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$STEPRUNNER_ROOT"

lock_digest="$(sha256sum package-lock.json | cut -c1-64)"
if [[ "$(cat node_modules/.steprunner-lock-digest 2>/dev/null)" != "$lock_digest" ]]; then
  log "installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_digest" >node_modules/.steprunner-lock-digest
fi
npx tsc -p .
chmod +x dist/services/cli/main.js
