#!/usr/bin/env bash
# The README's first command: brings the local stack up, makes the sample repository and runs one of its
# actions as a real step (context, image build, runc), showing live build progress, the step's logs and its
# result; then runs it again, which is fast and reuses the image.
set -euo pipefail
here="$(dirname "${BASH_SOURCE[0]}")"
"$here/up.sh"
source "$here/env.sh"

# `steprunner` on PATH, as the README uses it: a symlink to this clone's CLI, made again on every run (it may
# point at another clone). A file of that name that is not a symlink is someone else's and is left alone.
cli="$STEPRUNNER_ROOT/dist/services/cli-bundle/steprunner.cjs"
link=/usr/local/bin/steprunner
if [[ -e "$link" && ! -L "$link" ]]; then
  log "warning: $link exists and is not a symlink; left as it is (run the CLI as: node $cli)"
elif ! ln -sfn "$cli" "$link" 2>/dev/null; then
  log "warning: could not link $link to $cli (run as root, or run the CLI as: node $cli)"
fi

sample="$STEPRUNNER_STATE_DIR/sample-repo"
"$STEPRUNNER_ROOT/deploy/sample/make-sample-repo.sh" "$sample"
steprunner() { node "$cli" "$@"; }
step=(run --repo "$sample" --rev main --action hello --properties "$STEPRUNNER_ROOT/deploy/sample/properties.json"
  --secret /project/opschain/env/API_TOKEN)

log "running the sample's 'hello' action as a step"
steprunner "${step[@]}"
log "the same step again: nothing changed, so the image is reused"
time steprunner "${step[@]}"
