#!/usr/bin/env bash
# Run every benchmarks/bench_*.py with the project's Python, then the dashboard's
# Node.js benchmark, one after the other, and stop at the first that fails.
# Each prints its own table and writes its figures to .state/bench/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py="$root/.state/venv/bin/python"

# The benchmarks start their own servers. A running platform adds load that shows
# mostly in the p99 figures, so warn about it.
pid_file="$root/.state/run/supervisord.pid"
if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
  echo "bench: warning: the platform is up; its load raises the p99 figures. Run \`make down\` first for figures comparable with docs/benchmarks.md" >&2
fi

# bench_mesh.py compares the platform's decision path with one made in the sidecar.
bash "$root/scripts/build-opa-ext-authz.sh"

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

# The dashboard's fan-out benchmark is Node.js; it starts its own RabbitMQ.
echo "bench: dashboard-node/bench/ws_fanout.js"
if ! (cd "$root/dashboard-node" && node bench/ws_fanout.js); then
  echo "bench: dashboard-node/bench/ws_fanout.js failed" >&2
  exit 1
fi
