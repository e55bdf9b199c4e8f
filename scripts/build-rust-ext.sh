#!/usr/bin/env bash
# Build the Rust core (rust-ext/, Python module aiswa_core) in release mode with
# maturin and install the wheel into .state/venv. Idempotent: the build is skipped
# when the sources, the lock file and the toolchain are unchanged since the last
# successful install (hash stamp in .state/venv).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.state"
venv="$state/venv"
crate="$root/rust-ext"
wheels="$state/wheels"
stamp="$venv/.aiswa-core-sha256"

if [[ ! -x "$venv/bin/maturin" ]]; then
  echo "build-rust-ext: maturin is missing from $venv; run scripts/setup.sh first" >&2
  exit 1
fi
uv=$(command -v uv || echo "$state/tools/bin/uv")

# Everything that changes the wheel: sources, manifests, the stub and the toolchain.
sources_sum=$(
  cd "$crate"
  {
    find src scripts examples -type f -print0 | sort -z | xargs -0 sha256sum
    sha256sum Cargo.toml Cargo.lock pyproject.toml aiswa_core.pyi
    cargo --version
    rustc --version
    "$venv/bin/maturin" --version
  } | sha256sum | cut -c1-64
)
if [[ -f "$stamp" && $(cat "$stamp") == "$sources_sum" ]] \
  && "$venv/bin/python" -c "import aiswa_core" 2>/dev/null; then
  echo "build-rust-ext: aiswa_core is up to date"
  exit 0
fi

echo "build-rust-ext: building aiswa_core (release)"
rm -rf "$wheels"
# Two jobs by default, so that the build leaves CPU time to tests running beside it.
# Set CARGO_BUILD_JOBS to change that.
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} VIRTUAL_ENV="$venv" \
  "$venv/bin/maturin" build --release --locked --manifest-path "$crate/Cargo.toml" --out "$wheels"
wheel=$(find "$wheels" -name 'aiswa_core-*.whl' | head -n 1)
if [[ -z "$wheel" ]]; then
  echo "build-rust-ext: maturin produced no wheel in $wheels" >&2
  exit 1
fi
VIRTUAL_ENV="$venv" "$uv" pip install -q --no-deps --reinstall "$wheel"
"$venv/bin/python" -c "import aiswa_core"
echo "$sources_sum" >"$stamp"
echo "build-rust-ext: installed $(basename "$wheel")"
