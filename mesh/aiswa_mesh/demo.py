"""Run the main job on a real code base: a package of this interpreter's standard library.

``make demo`` starts the platform, then runs this: log in with the admin API
key that `make up` created, analyse the package through the gateway, and print
the report, the roadmap and where to look next.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from pathlib import Path

from aiswa_cli.main import main as aiswa
from aiswa_runtime import load_topology

from ._state import ROOT, default_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", default="email",
                        help="standard-library package to analyse (default %(default)s)")
    args = parser.parse_args()
    layout = default_layout()
    package = Path(sysconfig.get_paths()["stdlib"]) / args.package
    if not package.is_dir():
        raise SystemExit(f"{package} is not a package folder of this interpreter's standard library")
    python_files = sum(1 for path in package.rglob("*.py") if "__pycache__" not in path.parts)
    token_file = layout.root / "demo-token.json"
    common = ["--token-file", str(token_file)]
    started = time.monotonic()
    if aiswa([*common, "login", "--api-key-file", str(layout.admin_key)]) != 0:
        sys.exit(1)
    print(f"\n$ aiswa analyze {package}   ({python_files} Python files by `find`)\n")
    if aiswa([*common, "analyze", str(package), "--project", f"stdlib-{args.package}"]) != 0:
        sys.exit(1)
    print(f"\nThe main job took {time.monotonic() - started:.1f} s.")
    print("API:   https://127.0.0.1:8443 (CA certificate: "
          f"{layout.pki / 'gateway-ca.pem'})")
    print(f"Logs:  {layout.logs}/<program>.log, traces in {layout.traces}")
    print("Metrics: http://127.0.0.1:51051..51055/metrics (Prometheus, one per service)")
    dashboard = load_topology(str(ROOT / "mesh" / "topology.yaml"))["workloads"]["dashboard"]
    print(f"Dashboard: http://127.0.0.1:{dashboard['http_port']}/ (live runs, queues, "
          "request rates, denials and breakers)")


if __name__ == "__main__":
    main()
