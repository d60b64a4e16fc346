#!/usr/bin/env bash
# bundle_and_lint.sh [false]: the step image build's Ruby step (the docs' default Dockerfile runs it with the
# step context mounted as the env_context_zip secret). With a Gemfile in the repository it first names every
# gem the Gemfile asks for that this image lacks (there is no network: such a Gemfile fails the build), then
# installs the bundle from the image's gems; then it runs opschain-lint unless the first argument is "false".
set -euo pipefail
cd "${OPSCHAIN_REPO_DIR:-/opt/opschain}"
if [[ -f Gemfile ]]; then
  opschain-exec ruby -ropschain -e 'OpsChain::Runner.setup_gems(check_only: true)'
  opschain-exec bundle install --local --quiet
fi
if [[ "${1:-true}" != "false" ]]; then
  opschain-exec opschain-lint
fi
