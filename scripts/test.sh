#!/usr/bin/env bash
# The whole test suite: unit tests, then integration and end-to-end tests
# against the running platform. Starts the platform when it is not running and
# stops it afterwards (only if this script started it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The Rust core's own tests, and clippy with warnings as errors. Two jobs, as in
# scripts/build-rust-ext.sh.
(
  cd "$root/rust-ext"
  export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
  if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --release --locked --quiet -- -D warnings
  else
    echo "make test: cargo clippy is not installed, so the Rust core is not linted" >&2
  fi
  cargo test --release --locked --quiet
)

name=test
source "$root/scripts/platform-for-tests.sh"

"$py" -m pytest -q -p no:cacheprovider "$@" tests/unit tests/integration
# The dashboard's page is on its pod's address when the platform runs in pods.
dashboard_url=$("${launcher[@]}" url dashboard)
(cd "$root" && AISWA_E2E_DASHBOARD=$dashboard_url node --test dashboard-node/test/e2e/browser.e2e.js)
(cd "$root/dashboard-node" && npm test)
