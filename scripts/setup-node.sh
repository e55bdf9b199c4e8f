#!/usr/bin/env bash
# Install the dashboard's Node.js dependencies from package-lock.json and
# bundle its page, idempotently: each step runs only when its inputs changed
# since the last successful run (a SHA-256 stamp inside node_modules/ and
# dist/, both ignored by git).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
app="$root/dashboard-node"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup-node: node and npm are not on PATH; install Node.js 20 or later" >&2
  exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if ((major < 20)); then
  echo "setup-node: Node.js $(node --version) is too old; the dashboard needs 20 or later" >&2
  exit 1
fi

digest() { sha256sum "$@" | sha256sum | cut -c1-64; }

lock_sum=$(cd "$app" && digest package.json package-lock.json)
lock_stamp="$app/node_modules/.aiswa-lock-sha256"
if [[ ! -f "$lock_stamp" || $(cat "$lock_stamp") != "$lock_sum" ]]; then
  echo "setup-node: installing the dashboard's packages from package-lock.json"
  (cd "$app" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" >"$lock_stamp"
fi

build_sum=$(cd "$app" && digest build.js package-lock.json $(find web -type f | sort))
build_stamp="$app/dist/.sources-sha256"
if [[ ! -f "$build_stamp" || ! -f "$app/dist/app.js" || $(cat "$build_stamp") != "$build_sum" ]]; then
  (cd "$app" && node build.js)
  echo "$build_sum" >"$build_stamp"
fi
echo "setup-node: done (dashboard-node/node_modules, dashboard-node/dist)"
