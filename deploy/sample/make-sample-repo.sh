#!/usr/bin/env bash
# Makes the sample repository of the quick start and the benchmark: a real git repository (a nested .git
# cannot be committed) with Rake actions in actions.rb, and a branch whose .mintpress/Dockerfile customises
# the runner image. Commits have fixed names and dates, so the same script gives the same commits.
# Usage: make-sample-repo.sh DIR   (DIR is replaced)
set -euo pipefail
dir="${1:?usage: make-sample-repo.sh DIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

rm -rf "$dir"
mkdir -p "$dir"
cd "$dir"
export GIT_AUTHOR_NAME="steprunner sample" GIT_AUTHOR_EMAIL="sample@steprunner.invalid"
export GIT_COMMITTER_NAME="$GIT_AUTHOR_NAME" GIT_COMMITTER_EMAIL="$GIT_AUTHOR_EMAIL"
commit() { # commit MESSAGE DATE
  git add -A
  GIT_AUTHOR_DATE="$2" GIT_COMMITTER_DATE="$2" git -c commit.gpgsign=false commit -q -m "$1"
}

git init -q -b main
cp "$here/actions.rb" actions.rb
cat >README.md <<'MD'
# steprunner sample project

Actions are Rake tasks in `actions.rb`; `opschain-action -AT` lists them.
MD
commit "Sample actions" "2026-01-01T00:00:00Z"
git tag v1

# A custom runner image: the default Dockerfile with a tool of the project's own added.
git checkout -q -b custom-dockerfile
mkdir -p .mintpress
cp "$here/Dockerfile.custom" .mintpress/Dockerfile
commit "Custom step runner Dockerfile" "2026-01-02T00:00:00Z"
git checkout -q main
