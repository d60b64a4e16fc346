#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine as root: installs and starts what it needs (the local stack),
# runs unit, integration and lifecycle tests, and takes the stack down again, whatever happened.
# The integration tests and the BuildKit fault kinds run twice: on dockerd's BuildKit (v0.8, Debian's), then on
# a standalone buildkitd (STEPRUNNER_BUILDKITD_BIN; by default upstream's v0.24 from ../shared/buildkit/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export STEPRUNNER_BUILDKIT=dockerd
source deploy/local/env.sh

trap 'STEPRUNNER_BUILDKIT=buildkitd deploy/local/down.sh >/dev/null 2>&1 || true' EXIT
deploy/local/up.sh
# The base of our own service images, which the container tests build and run.
deploy/local/service-base-image.sh ensure

status=0
# Lint and format check (Biome), before anything slow.
npm run --silent lint || status=$?
# The runner image's opschain library (deploy/runner/lib), with minitest on the host's Debian Ruby.
ruby -Itest/runner -e 'Dir["test/runner/*_test.rb"].sort.each { |file| require "./#{file}" }' || status=$?
node --test --test-concurrency=1 dist/test/unit/ dist/test/integration/ || status=$?
# The lifecycle tests bring the stack up again and then down: they run last, on their own.
node --test --test-concurrency=1 dist/test/lifecycle/ || status=$?

# The same stack on a standalone buildkitd.
shared_buildkitd="../shared/buildkit/buildkitd-v0.24.0-linux-amd64.xz"
if [[ -z "${STEPRUNNER_BUILDKITD_BIN:-}" && -f "$shared_buildkitd" ]]; then
  STEPRUNNER_BUILDKITD_BIN="$STEPRUNNER_STATE_DIR/bin/buildkitd-v0.24.0"
  if [[ ! -x "$STEPRUNNER_BUILDKITD_BIN" ]]; then
    mkdir -p "$(dirname "$STEPRUNNER_BUILDKITD_BIN")"
    xz -dc "$shared_buildkitd" >"$STEPRUNNER_BUILDKITD_BIN.partial" && chmod +x "$STEPRUNNER_BUILDKITD_BIN.partial"
    mv "$STEPRUNNER_BUILDKITD_BIN.partial" "$STEPRUNNER_BUILDKITD_BIN"
  fi
fi
if [[ -n "${STEPRUNNER_BUILDKITD_BIN:-}" ]]; then
  export STEPRUNNER_BUILDKITD_BIN STEPRUNNER_BUILDKIT=buildkitd STEPRUNNER_BUILDKIT_ADDR="unix://$STEPRUNNER_RUN_DIR/buildkitd.sock"
  deploy/local/up.sh
  node --test --test-concurrency=1 dist/test/integration/ || status=$?
  node --test --test-concurrency=1 dist/test/lifecycle/ || status=$?
else
  # CI must run both BuildKits; elsewhere (a clone without ../shared) the second pass is skipped, loudly.
  echo "no standalone buildkitd (set STEPRUNNER_BUILDKITD_BIN, or provide $shared_buildkitd): its pass is SKIPPED" >&2
  [[ "${CI:-}" == true ]] && status=1
fi
exit $status
