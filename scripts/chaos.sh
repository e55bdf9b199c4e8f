#!/usr/bin/env bash
# Run the chaos experiments of tests/chaos/ (see docs/chaos.md). Each stops one
# part of the platform or cuts a pod off, and measures the recovery. The
# platform is started if needed, and then stopped again. The figures go to
# .state/chaos/chaos.json.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

name=chaos
source "$root/scripts/platform-for-tests.sh"

"$py" -m pytest -q -p no:cacheprovider "$@" tests/chaos
