#!/usr/bin/env bash
# bundle_and_lint.sh [false]: the step image build's Ruby step (the docs' default Dockerfile runs it with the
# step context mounted as the env_context_zip secret). With a Gemfile in /opt/opschain it installs the bundle
# from the gems in this image (no network: a gem the image lacks fails the build, named), then runs
# opschain-lint unless the first argument is "false".
set -euo pipefail
cd /opt/opschain
if [[ -f Gemfile ]]; then
  opschain-exec bundle install --local --quiet
fi
if [[ "${1:-true}" != "false" ]]; then
  opschain-exec opschain-lint
fi
