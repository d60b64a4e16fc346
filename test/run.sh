#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine as root: installs and starts what it needs (the local stack),
# runs unit, integration and lifecycle tests, and takes the stack down again, whatever happened.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source deploy/local/env.sh

trap 'deploy/local/down.sh >/dev/null 2>&1 || true' EXIT
deploy/local/up.sh
# The base of our own service images, which the container tests build and run.
deploy/local/service-base-image.sh ensure

status=0
# The runner image's opschain library (deploy/runner/lib), with minitest on the host's Debian Ruby.
ruby -Itest/runner -e 'Dir["test/runner/*_test.rb"].sort.each { |file| require "./#{file}" }' || status=$?
node --test --test-concurrency=1 dist/test/unit/ dist/test/integration/ || status=$?
# The lifecycle tests bring the stack up again and then down: they run last, on their own.
node --test --test-concurrency=1 dist/test/lifecycle/ || status=$?
exit $status
