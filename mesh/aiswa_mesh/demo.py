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

from ._state import default_layout
from .launcher import Platform


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
    # The CLI packs every regular file, so its count can be higher; the report
    # covers the Python files.
    print(f"\n$ aiswa analyze {package}   ({python_files} Python files by `find`, which the "
          "report covers; the archive also carries the package's other files)\n")
    if aiswa([*common, "analyze", str(package), "--project", f"stdlib-{args.package}"]) != 0:
        sys.exit(1)
    print(f"\nThe main job took {time.monotonic() - started:.1f} s.")
    platform = Platform(layout)
    print(f"API:   {platform.gateway_url} (CA certificate: {layout.pki / 'gateway-ca.pem'})")
    print(f"Logs:  {layout.logs}/<program>.log, traces in {layout.traces}")
    metrics = [f"http://{platform.network.address(name)}:{spec['port'] + 1000}/metrics"
               for name, spec in platform.topology["workloads"].items()]
    print("Metrics (Prometheus, one per service):", *metrics, sep="\n  ")
    print(f"Dashboard: {platform.dashboard_url} (live runs, queues, request rates, denials "
          "and breakers)")


if __name__ == "__main__":
    main()
