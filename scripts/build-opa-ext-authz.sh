#!/usr/bin/env bash
# Build benchmarks/opa-ext-authz (OPA with an Envoy ext_authz gRPC server) into
# .state/tools/go/bin/opa-ext-authz, for the mesh benchmark's sidecar-decision
# path. Go's build cache makes a rebuild with nothing changed take seconds.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.state/tools"
if ! command -v go >/dev/null 2>&1; then
  echo "build-opa-ext-authz: go not found; install Go 1.26 or newer and run this script again" >&2
  exit 1
fi
echo "build-opa-ext-authz: building $tools/go/bin/opa-ext-authz (the first build can take minutes)"
cd "$root/benchmarks/opa-ext-authz"
# The same module cache as install-opa.sh, so OPA's modules are downloaded once.
CGO_ENABLED=0 GOPATH="$tools/gopath" GOMODCACHE="$tools/gomodcache" GOFLAGS=-modcacherw \
  go build -o "$tools/go/bin/opa-ext-authz" .
