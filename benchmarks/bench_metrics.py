"""Compare the throughput of the metrics engines on the Python standard library.

All engines compute the same metric set: raw line counts, cyclomatic complexity of
every function, Halstead volume and maintainability index.

- rust (1 thread) and rust (all cores): ``aiswa_core.analyze_files``.
- python: the reference, ``aiswa_reflector.metrics.analyze_source``, one file at a time.
- radon 6: ``radon.raw.analyze``, ``radon.complexity.cc_visit``,
  ``radon.metrics.mi_visit(code, multi=True)`` and ``radon.metrics.h_visit``.

There are two corpora. The three engines above measure every ``.py`` file of the
interpreter's standard library (site-packages excluded). All four measure a subset
of packages, because radon's raw analysis is quadratic in the length of a
statement and takes minutes on the whole library. It takes 36 s on
``html/entities.py`` alone, which the subset leaves out.

The Rust runs are repeated and the fastest is kept, since other processes share
the machine. Run from the repository root after scripts/build-rust-ext.sh:

    .state/venv/bin/python benchmarks/bench_metrics.py

It prints a table and writes the figures to .state/bench/metrics.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sysconfig
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import aiswa_core
from radon.complexity import cc_visit
from radon.metrics import h_visit, mi_visit
from radon.raw import analyze as radon_raw

from aiswa_reflector.metrics import analyze_source

ROOT = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# The packages of the reference's radon parity test, less html/entities.py.
RADON_PACKAGES = (
    "email", "json", "asyncio", "logging", "http", "importlib", "concurrent", "unittest",
    "xml", "html", "urllib", "collections", "multiprocessing", "re", "tomllib", "zoneinfo",
    "wsgiref", "xmlrpc",
)
RADON_EXCLUDED = ("html/entities.py",)

Files = list[tuple[str, bytes]]


def stdlib_files() -> Files:
    paths = sorted(
        path for path in STDLIB.rglob("*.py") if "site-packages" not in path.relative_to(STDLIB).parts
    )
    return [(str(path.relative_to(STDLIB)), path.read_bytes()) for path in paths]


def radon_subset(files: Files) -> Files:
    return [
        (path, content)
        for path, content in files
        if path.split("/", 1)[0] in RADON_PACKAGES and path not in RADON_EXCLUDED
    ]


def run_rust(files: Files, threads: int) -> None:
    results = aiswa_core.analyze_files(files, threads=threads)
    assert len(results) == len(files)


def run_python(files: Files) -> None:
    for path, content in files:
        analyze_source(path, content)


def run_radon(files: Files) -> None:
    for _, content in files:
        try:
            code = importlib.util.decode_source(content)
            radon_raw(code)
            cc_visit(code)
            mi_visit(code, multi=True)
            h_visit(code)
        except (SyntaxError, ValueError):
            # Files that do not parse cost their time like any other.
            pass


def measure(run: Callable[[], None], repeat: int) -> float:
    """Return the fastest of ``repeat`` wall-clock times of ``run``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each Rust measurement (default 5)")
    parser.add_argument(
        "--output", type=Path, default=ROOT / ".state/bench/metrics.json", help="JSON file to write"
    )
    args = parser.parse_args()

    everything = stdlib_files()
    subset = radon_subset(everything)
    cases: list[tuple[str, str, Files, Callable[[Files], None], int]] = [
        ("rust (1 thread)", "stdlib", everything, lambda files: run_rust(files, 1), args.repeat),
        ("rust (all cores)", "stdlib", everything, lambda files: run_rust(files, 0), args.repeat),
        ("python reference", "stdlib", everything, run_python, 1),
        ("rust (1 thread)", "radon subset", subset, lambda files: run_rust(files, 1), args.repeat),
        ("rust (all cores)", "radon subset", subset, lambda files: run_rust(files, 0), args.repeat),
        ("python reference", "radon subset", subset, run_python, 1),
        ("radon 6", "radon subset", subset, run_radon, 1),
    ]
    rows = []
    for engine, corpus, files, run, repeat in cases:
        size = sum(len(content) for _, content in files)
        seconds = measure(lambda: run(files), repeat)
        rows.append(
            {
                "engine": engine,
                "corpus": corpus,
                "files": len(files),
                "megabytes": round(size / 1e6, 2),
                "seconds": round(seconds, 3),
                "files_per_second": round(len(files) / seconds, 1),
                "megabytes_per_second": round(size / 1e6 / seconds, 2),
                "runs": repeat,
            }
        )
        print(f"measured {engine} on {corpus}: {seconds:.2f} s", flush=True)

    header = f"{'engine':<18} {'corpus':<13} {'files':>6} {'MB':>7} {'seconds':>8} {'files/s':>9} {'MB/s':>7}"
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['engine']:<18} {row['corpus']:<13} {row['files']:>6} {row['megabytes']:>7.2f} "
            f"{row['seconds']:>8.3f} {row['files_per_second']:>9.1f} {row['megabytes_per_second']:>7.2f}"
        )

    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "stdlib": str(STDLIB),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "aiswa_core": aiswa_core.__version__,
        "radon_subset": {"packages": RADON_PACKAGES, "excluded": RADON_EXCLUDED},
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
