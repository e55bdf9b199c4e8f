#!/usr/bin/env bash
# Install Open Policy Agent into .state/tools/go/bin/opa with `go install`,
# idempotently: nothing is built when that binary already has the pinned version.
# Services ask OPA to authorize every call, and `opa test` checks policies/rego.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.state/tools"
opa_version=${OPA_VERSION:-v1.22.4}
opa="$tools/go/bin/opa"

# The version is read into a variable first: in a pipe, `grep -q` or `head`
# may close it early, and Go programs die of SIGPIPE, which pipefail reports.
installed=$("$opa" version 2>/dev/null || true)
if [[ -x "$opa" ]] && grep -qx "Version: ${opa_version#v}" <<<"$installed"; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "install-opa: go not found; install Go 1.26 or newer (opa $opa_version needs it) and run this script again" >&2
  exit 1
fi
echo "install-opa: installing opa $opa_version with go install (this can take minutes)"
# CGO_ENABLED=0 builds a static binary, so no C toolchain is needed. The
# module cache is made writable so that `make clean` can delete it.
CGO_ENABLED=0 GOBIN="$tools/go/bin" GOPATH="$tools/gopath" GOMODCACHE="$tools/gomodcache" \
  GOFLAGS=-modcacherw go install "github.com/open-policy-agent/opa@$opa_version"
installed=$("$opa" version)
echo "install-opa: ${installed%%$'\n'*}"
