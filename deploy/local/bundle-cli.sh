#!/usr/bin/env bash
# Bundles the CLI into dist/services/cli-bundle/: steprunner.cjs (the command: a launcher that keeps a V8 code
# cache per command) and steprunner-program.cjs (every command, one CommonJS file, each command's modules
# initialised only when it runs). CommonJS because a code cache can be given to a script, not to an ES module.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=dist/services/cli-bundle
rm -rf "$out"
# --inject: our own Headers class instead of Node's (loading undici costs ~15 ms); import.meta.url is the one
# ES-module-only name the CLI's code uses (version.ts), given as the bundle's own file URL.
npx esbuild dist/services/cli/program.js --bundle --platform=node --format=cjs --target=node20 --log-level=warning \
  --inject:dist/services/cli/fetch-headers.js \
  --define:import.meta.url=__bundleFileUrl \
  --banner:js="const __bundleFileUrl = require('node:url').pathToFileURL(__filename).href;" \
  --outfile="$out/steprunner-program.cjs"
grep -v "^//# sourceMappingURL=" dist/services/cli/launcher.cjs >"$out/steprunner.cjs"
chmod +x "$out/steprunner.cjs"
