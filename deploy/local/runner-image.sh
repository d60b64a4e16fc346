#!/usr/bin/env bash
# The base runner image (OPSCHAIN_BASE_RUNNER): Debian minbase with Ruby, Rake, Hashie, Bundler, git and unzip,
# the step entry of deploy/runner/bin, the opschain library of deploy/runner/lib installed as the gem
# opschain-core (so `require 'opschain'` and a Gemfile naming opschain-core work offline), a trust store the
# docs' Dockerfile can add certificates to, and the user opschain (uid/gid 10001) owning /opt/opschain, where
# the repository goes.
# Idempotent: it is rebuilt only when its inputs (this script, deploy/runner, the packages) change.
# Usage: runner-image.sh ensure|inputs-digest
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
source "$here/env.sh"
source "$here/debian-image.sh"

runner_src="$STEPRUNNER_ROOT/deploy/runner"
ca_bundle=/etc/pki/tls/certs/ca-bundle.crt
packages=ruby,rake,ruby-hashie,ruby-bundler,git,unzip,ca-certificates

inputs_digest() {
  { cat "${BASH_SOURCE[0]}" "$here/debian-image.sh"; echo "$STEPRUNNER_DEBIAN_SUITE $packages $STEPRUNNER_VERSION"
    if [[ -d "$runner_src" ]]; then (cd "$runner_src" && find . -type f | LC_ALL=C sort | xargs -r sha256sum); fi
  } | sha256sum | cut -c1-64
}

configure_runner() {
  local rootfs="$1"
  chroot "$rootfs" groupadd --gid 10001 opschain
  chroot "$rootfs" useradd --uid 10001 --gid 10001 --home-dir /opt/opschain --no-create-home --shell /bin/bash opschain
  install -d -o 10001 -g 10001 -m 0755 "$rootfs/opt/opschain"
  install_opschain_gem "$rootfs"
  # The docs' Dockerfile copies CA certificates to the anchors directory as opschain, and
  # opschain_configure_project_repo.sh appends them to this bundle (SSL_CERT_FILE, GIT_SSL_CAINFO).
  install -d -o 10001 -g 10001 -m 0755 "$rootfs/etc/pki/ca-trust/source/anchors" "$rootfs/etc/pki/tls/certs"
  if [[ -f "$rootfs/etc/ssl/certs/ca-certificates.crt" ]]; then
    install -o 10001 -g 10001 -m 0644 "$rootfs/etc/ssl/certs/ca-certificates.crt" "$rootfs$ca_bundle"
  else
    install -o 10001 -g 10001 -m 0644 /dev/null "$rootfs$ca_bundle"
  fi
}

# deploy/runner as /usr/local/lib/opschain-core: lib/ registered as the installed gem opschain-core (its gem
# directory a link there), depending on Debian's hashie and rake; bin/ beside it, as in deploy/runner (the Ruby
# commands load lib/opschain/boot.rb relative to themselves), each command linked into /usr/local/bin;
# gem-paths, boot.rb's record of where RubyGems finds the library's gems, made as the image's user; and
# compiled/, the files a start loads as Ruby compiles them (lib/opschain/compiled_code.rb).
install_opschain_gem() {
  local rootfs="$1" gem_dir=/usr/local/lib/opschain-core gems version command
  version="$(sed -n "s/^  VERSION = '\(.*\)'$/\1/p" "$runner_src/lib/opschain/version.rb")"
  [[ -n "$version" ]] || die "no VERSION in $runner_src/lib/opschain/version.rb"
  install -d "$rootfs$gem_dir"
  cp -r "$runner_src/lib" "$runner_src/bin" "$rootfs$gem_dir/"
  chmod -R a+rX "$rootfs$gem_dir"
  chmod a+x "$rootfs$gem_dir"/bin/*
  for command in "$rootfs$gem_dir"/bin/*; do ln -sfn "$gem_dir/bin/${command##*/}" "$rootfs/usr/local/bin/${command##*/}"; done
  gems="$(chroot "$rootfs" ruby -e 'print Gem.default_dir')"
  install -d "$rootfs$gems/specifications" "$rootfs$gems/gems"
  ln -sfn "$gem_dir" "$rootfs$gems/gems/opschain-core-$version"
  cat >"$rootfs$gems/specifications/opschain-core-$version.gemspec" <<RUBY
Gem::Specification.new do |spec|
  spec.name = 'opschain-core'
  spec.version = '$version'
  spec.summary = "steprunner's opschain library: the action DSL, properties, context and child steps"
  spec.authors = ['steprunner']
  spec.files = []
  spec.require_paths = ['lib']
  spec.add_runtime_dependency 'hashie'
  spec.add_runtime_dependency 'rake'
end
RUBY
  chroot --userspec=10001:10001 "$rootfs" env -i HOME=/opt/opschain LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin \
    ruby -e "require '$gem_dir/lib/opschain/boot'; OpsChain::Boot.record" >"$rootfs$gem_dir/gem-paths"
  # Started as a step starts (the image's HOME, the record), the files a start loads compiled into compiled/.
  chroot "$rootfs" env -i HOME=/opt/opschain LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin ruby --disable-gems -e \
    "require '$gem_dir/lib/opschain/boot'; OpsChain::Boot.start; require 'opschain'; OpsChain::CompiledCode.compile"
  chmod -R a+rX "$rootfs$gem_dir/compiled"
}

case "${1:-}" in
  ensure)
    ensure_debian_image "$OPSCHAIN_BASE_RUNNER" "$packages" "$(inputs_digest)" configure_runner \
      --user opschain --workdir /opt/opschain --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env "SSL_CERT_FILE=$ca_bundle" --env "GIT_SSL_CAINFO=$ca_bundle"
    ;;
  inputs-digest) inputs_digest ;;
  *) echo "usage: $0 ensure|inputs-digest" >&2; exit 2 ;;
esac
