#!/usr/bin/env bash
# The whole test suite: unit tests, then integration and end-to-end tests
# against the running platform. Starts the platform when it is not running and
# stops it afterwards (only if this script started it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py="$root/.state/venv/bin/python"
launcher=("$py" -m aiswa_mesh.launcher)

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

started=0
if ! "${launcher[@]}" status >/dev/null 2>&1; then
  # Two-minute certificates rotate about once a minute, so the suite runs
  # across rotations and tests/integration/test_rotation.py can watch them.
  # One-minute credential leases renew about every 20 s and are replaced
  # before two minutes (tests/integration/test_credentials.py).
  AISWA_CERT_TTL=${AISWA_CERT_TTL:-2m} AISWA_CRED_TTL=${AISWA_CRED_TTL:-1m} \
    AISWA_CRED_MAX_TTL=${AISWA_CRED_MAX_TTL:-2m} "${launcher[@]}" up
  started=1
fi
cleanup() {
  local status=$?
  if [[ $started == 1 ]]; then
    "${launcher[@]}" down
    # `down` must remove every namespace and link that `up` created.
    left=$(ip -o netns list 2>/dev/null | grep -o '^aiswa-[a-z]*' || true)
    left+=$(ip -o link show 2>/dev/null | grep -o ' aiswa[0-9a-z-]*@\| aiswa0:' || true)
    left+=$(nft list tables 2>/dev/null | grep -o 'aiswa_aiswa0' || true)
    if [[ -n $left ]]; then
      echo "make test: \`make down\` left pods behind: $left" >&2
      status=1
    fi
  fi
  exit $status
}
trap cleanup EXIT

"$py" -m pytest -q -p no:cacheprovider "$@" tests/unit tests/integration
# The dashboard's page is on its pod's address when the platform runs in pods.
dashboard_url=$("${launcher[@]}" url dashboard)
(cd "$root" && AISWA_E2E_DASHBOARD=$dashboard_url node --test dashboard-node/test/e2e/browser.e2e.js)
(cd "$root/dashboard-node" && npm test)
