#!/usr/bin/env bash
# opschain_configure_project_repo.sh [GIT_SHA]: run by the docs' default Dockerfile after the repository and
# the trust store are copied in. Marks /opt/opschain as a safe git directory, checks a copied .git out at
# GIT_SHA when it is elsewhere, and adds the certificates copied to /etc/pki/ca-trust/source/anchors to the
# CA bundle the runner uses (SSL_CERT_FILE, GIT_SSL_CAINFO).
set -euo pipefail
sha="${1:-}"
repo=/opt/opschain
anchors=/etc/pki/ca-trust/source/anchors
bundle=/etc/pki/tls/certs/ca-bundle.crt

git config --global --add safe.directory "$repo"
if [[ -n "$sha" && -d "$repo/.git" ]]; then
  head="$(git -C "$repo" rev-parse -q --verify HEAD 2>/dev/null || true)"
  if [[ "$head" != "$sha" ]] && git -C "$repo" cat-file -e "$sha^{commit}" 2>/dev/null; then
    git -C "$repo" checkout -q --detach "$sha"
  fi
fi

shopt -s nullglob
certificates=("$anchors"/*.crt "$anchors"/*.pem "$anchors"/*.cer)
if (( ${#certificates[@]} > 0 )); then
  cat /etc/ssl/certs/ca-certificates.crt "${certificates[@]}" >"$bundle.new"
  mv "$bundle.new" "$bundle"
  echo "opschain_configure_project_repo.sh: ${#certificates[@]} certificate(s) added to $bundle"
fi
