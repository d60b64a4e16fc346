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
# The CLI bundled (dist/services/cli-bundle/: a launcher with a code cache per command, and the program): one file,
# not hundreds of modules. Made again only when what it bundles changed.
bundle=dist/services/cli-bundle/steprunner.cjs
if [[ ! -f "$bundle" ]] || [[ -n "$(find dist/services dist/gen -name '*.js' -newer "$bundle" -print -quit)" ]]; then
  npm run --silent bundle:cli
fi
