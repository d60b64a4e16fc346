#!/usr/bin/env bash
# Installs the Debian packages the local stack runs on. Safe to run again: it installs only what is missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

packages=(docker.io docker-registry runc debootstrap git ca-certificates curl openssl attr apache2-utils python3-grpc-tools docker-compose
  ruby ruby-hashie ruby-minitest ruby-bundler rake) # ruby…: test/runner, the runner image's opschain library tests
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
