#!/usr/bin/env bash
# Run every benchmarks/bench_*.py with the project's Python, one after the other,
# and stop at the first that fails. Each prints its own table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py="$root/.state/venv/bin/python"

shopt -s nullglob
benchmarks=(benchmarks/bench_*.py)
if ((${#benchmarks[@]} == 0)); then
  echo "bench: no benchmarks/bench_*.py found" >&2
  exit 1
fi
for benchmark in "${benchmarks[@]}"; do
  echo "bench: $benchmark"
  if ! "$py" "$benchmark"; then
    echo "bench: $benchmark failed" >&2
    exit 1
  fi
  echo
done
