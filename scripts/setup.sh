#!/usr/bin/env bash
# Install everything the platform needs on a fresh Debian machine, idempotently:
# system packages, the Python environment from requirements.lock, generated
# gRPC code and the descriptor set that the gateway transcodes with.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.state"
venv="$state/venv"
mkdir -p "$state"

apt_packages=(postgresql rabbitmq-server iproute2 nftables openssl chromium)
missing=()
for package in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]}; install them as root:" >&2
    echo "  apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  # The packages' own services stay stopped: the launcher runs private
  # instances under .state/ instead.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if ! command -v uv >/dev/null 2>&1 && [[ ! -x "$state/tools/bin/uv" ]]; then
  echo "setup: installing uv"
  "$python" -m venv "$state/tools"
  "$state/tools/bin/pip" install -q uv
fi
uv=$(command -v uv || echo "$state/tools/bin/uv")

if [[ ! -x "$venv/bin/python" ]]; then
  "$uv" venv -q --python "$python" "$venv"
fi
stamp="$venv/.lock-sha256"
lock_sum=$(sha256sum "$root/requirements.lock" "$root/pyproject.toml" | sha256sum | cut -c1-64)
if [[ ! -f "$stamp" || $(cat "$stamp") != "$lock_sum" ]]; then
  echo "setup: installing the Python environment from requirements.lock"
  VIRTUAL_ENV="$venv" "$uv" pip sync -q --require-hashes "$root/requirements.lock"
  VIRTUAL_ENV="$venv" "$uv" pip install -q --no-deps -e "$root"
  echo "$lock_sum" >"$stamp"
fi

# protoc-gen-openapiv2 (grpc-gateway) writes the OpenAPI description of the
# REST API from the google.api.http annotations.
openapi_plugin="$state/tools/go/bin/protoc-gen-openapiv2"
if [[ ! -x "$openapi_plugin" ]]; then
  echo "setup: installing protoc-gen-openapiv2 with go install"
  GOBIN="$state/tools/go/bin" GOPATH="$state/tools/gopath" GOMODCACHE="$state/tools/gomodcache" \
    GOFLAGS=-modcacherw go install \
    github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@v2.27.3
fi

bash "$root/scripts/install-opa.sh"
bash "$root/scripts/build-rust-ext.sh"
bash "$root/scripts/setup-node.sh"

"$venv/bin/python" -m aiswa_mesh.protogen --root "$root" --openapi-plugin "$openapi_plugin"
echo "setup: done (venv: $venv)"
