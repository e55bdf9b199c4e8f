"""Compare the throughput of the metrics engines on the Python standard library.

Every engine computes the same metric set: raw line counts, the cyclomatic
complexity of every function, the Halstead volume and the maintainability index.

- rust (1 thread) and rust (all cores): ``aiswa_core.analyze_files``.
- python reference: ``aiswa_reflector.metrics.analyze_source``, one file at a time.
- radon 6: ``radon.raw.analyze``, ``radon.complexity.cc_visit`` with
  ``add_inner_blocks``, ``radon.metrics.h_visit`` and
  ``radon.metrics.mi_visit(code, multi=True)``. mi_visit is handed the raw counts
  already computed, so that radon's raw analysis runs once per file, as the other
  engines' does.

The main corpus, on which all four run, is every ``.py`` file of the interpreter's
standard library (site-packages excluded) less the files that have a statement of
500 lines or more. radon's raw analysis is quadratic in the length of a statement
and takes about 25 minutes on those files, 11 in CPython 3.11.7's library, most of
it on pydoc_data/topics.py. The Rust core and the reference also run on the whole
library and on those files alone.

The growth check measures the Rust core and the reference on inputs of one shape
at two sizes, the second twice the first. Linear time gives a ratio near 2, and
quadratic time near 4. The benchmark fails when a ratio exceeds MAX_GROWTH_RATIO.
radon's raw analysis runs on the smallest table for contrast.

Rust timings are the fastest of --repeat runs, taken in turns with the other
Rust measurement of the same corpus, since other processes share the machine. Run from the repository root after scripts/build-rust-ext.sh:

    .state/venv/bin/python benchmarks/bench_metrics.py

It prints the tables and writes the figures to .state/bench/metrics.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import sys
import sysconfig
import time
import tokenize
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import aiswa_core
import radon.metrics
from radon.complexity import add_inner_blocks, cc_visit
from radon.metrics import h_visit, mi_visit
from radon.raw import analyze as radon_raw

from aiswa_reflector.metrics import analyze_source

ROOT = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])
LONG_STATEMENT_LINES = 500
# A doubled input may take at most this many times as long. Linear time gives
# about 2, quadratic time about 4, and the margin absorbs timing noise.
MAX_GROWTH_RATIO = 3.0

Files = list[tuple[str, bytes]]


def stdlib_files() -> Files:
    paths = sorted(
        path for path in STDLIB.rglob("*.py") if "site-packages" not in path.relative_to(STDLIB).parts
    )
    return [(path.relative_to(STDLIB).as_posix(), path.read_bytes()) for path in paths]


def longest_statement_lines(content: bytes) -> int:
    """Return how many physical lines the longest logical line spans, 0 if it does not tokenize."""
    longest = 0
    first_row = None
    skipped = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    try:
        text = importlib.util.decode_source(content)
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in skipped:
                continue
            if first_row is None:
                first_row = token.start[0]
            if token.type == tokenize.NEWLINE:
                longest = max(longest, token.end[0] - first_row + 1)
                first_row = None
    except (SyntaxError, UnicodeDecodeError, LookupError, ValueError):
        return 0
    return longest


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
            raw = radon_raw(code)
            add_inner_blocks(cc_visit(code))
            h_visit(code)
            with mock.patch.object(radon.metrics, "analyze", lambda _code: raw):
                mi_visit(code, multi=True)
        except (SyntaxError, ValueError, UnicodeDecodeError, LookupError, RecursionError):
            # Files that do not parse cost their time like any other.
            pass


def measure(runs: dict[str, Callable[[], None]], repeat: int) -> dict[str, float]:
    """Return the fastest of ``repeat`` wall-clock times of each run, in seconds.

    The runs take turns, so that a burst of load from other processes slows all of
    them alike instead of the one measured at that moment.
    """
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def throughput_rows(corpora: dict[str, Files], repeat: int) -> list[dict]:
    rows = []
    for corpus, files in corpora.items():
        size = sum(len(content) for _, content in files)
        measured = [
            (
                measure(
                    {
                        "rust (1 thread)": lambda: run_rust(files, 1),
                        "rust (all cores)": lambda: run_rust(files, 0),
                    },
                    repeat,
                ),
                repeat,
            ),
            (measure({"python reference": lambda: run_python(files)}, 1), 1),
        ]
        if corpus == "main":
            measured.append((measure({"radon 6": lambda: run_radon(files)}, 1), 1))
        for seconds_by_engine, runs in measured:
            for engine, seconds in seconds_by_engine.items():
                rows.append(
                    {
                        "engine": engine,
                        "corpus": corpus,
                        "files": len(files),
                        "megabytes": round(size / 1e6, 2),
                        "seconds": round(seconds, 3),
                        "files_per_second": round(len(files) / seconds, 1),
                        "megabytes_per_second": round(size / 1e6 / seconds, 2),
                        "runs": runs,
                    }
                )
                print(f"measured {engine} on {corpus}: {seconds:.2f} s", flush=True)
    return rows


def speedups(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Return, per corpus, the ratios of the engines' times: how many times as fast one is as another."""
    result = {}
    for corpus in dict.fromkeys(row["corpus"] for row in rows):
        seconds = {row["engine"]: row["seconds"] for row in rows if row["corpus"] == corpus}
        single_thread, all_cores = seconds["rust (1 thread)"], seconds["rust (all cores)"]
        reference = seconds["python reference"]
        ratios = {
            "rust all cores over rust 1 thread": round(single_thread / all_cores, 2),
            "rust 1 thread over python reference": round(reference / single_thread, 1),
            "rust all cores over python reference": round(reference / all_cores, 1),
        }
        if "radon 6" in seconds:
            ratios["rust 1 thread over radon"] = round(seconds["radon 6"] / single_thread, 1)
            ratios["python reference over radon"] = round(seconds["radon 6"] / reference, 2)
        result[corpus] = ratios
    return result


# Inputs whose size is set by a count: each builder returns the source for a count,
# paired with the count the Rust core measures.
SHAPES: dict[str, tuple[Callable[[int], str], int]] = {
    # One statement over many lines, on which radon's raw analysis is quadratic.
    "dict literal, one entry per line": (
        lambda count: "TABLE = {\n" + "".join(f"    'key{i}': ({i}, 'v{i}'),\n" for i in range(count)) + "}\n",
        100_000,
    ),
    "list literal on one line": (
        lambda count: "ROW = [" + ", ".join(f"{i}" for i in range(count)) + "]\n",
        200_000,
    ),
    "docstring of many lines": (
        lambda count: 'TEXT = """\n' + "".join(f"line {i} of the text\n" for i in range(count)) + '"""\n',
        200_000,
    ),
    "many small functions": (
        lambda count: "".join(
            f"def f{i}(a, b):\n    if a and b:\n        return a + b * {i}\n    return -a\n\n"
            for i in range(count)
        ),
        20_000,
    ),
    "nested blocks in each function": (
        lambda count: "".join(
            f"def g{i}(x):\n"
            + "".join("    " * (level + 1) + f"for v{level} in x:\n" for level in range(10))
            + "    " * 11
            + "pass\n"
            for i in range(count)
        ),
        4_000,
    ),
}


def growth_rows(repeat: int) -> list[dict]:
    # The reference runs on a quarter of the Rust core's input, which keeps its
    # runs to a few seconds.
    engines: list[tuple[str, Callable[[bytes], object], int, int]] = [
        ("rust (1 thread)", lambda source: aiswa_core.analyze_files([("s.py", source)], threads=1), repeat, 1),
        ("python reference", lambda source: analyze_source("s.py", source), 2, 4),
    ]
    rows = []
    for shape, (build, count) in SHAPES.items():
        for engine, run, runs, divisor in engines:
            small = build(count // divisor).encode()
            large = build(2 * (count // divisor)).encode()
            seconds = measure({"small": lambda: run(small), "large": lambda: run(large)}, runs)
            first, second = seconds["small"], seconds["large"]
            rows.append(
                {
                    "shape": shape,
                    "engine": engine,
                    "megabytes": [round(len(small) / 1e6, 2), round(len(large) / 1e6, 2)],
                    "seconds": [round(first, 4), round(second, 4)],
                    "ratio": round(second / first, 2),
                }
            )
            print(f"measured growth of {engine} on {shape}: {second / first:.2f}", flush=True)
    # radon for contrast, on a table small enough to finish within a minute.
    build = SHAPES["dict literal, one entry per line"][0]
    small, large = build(1000), build(2000)
    seconds = measure({"small": lambda: radon_raw(small), "large": lambda: radon_raw(large)}, 1)
    first, second = seconds["small"], seconds["large"]
    rows.append(
        {
            "shape": "dict literal, one entry per line",
            "engine": "radon 6 raw analysis",
            "megabytes": [round(len(small) / 1e6, 3), round(len(large) / 1e6, 3)],
            "seconds": [round(first, 4), round(second, 4)],
            "ratio": round(second / first, 2),
        }
    )
    return rows


def print_tables(rows: list[dict], ratios: dict[str, dict[str, float]], growth: list[dict]) -> None:
    header = f"{'engine':<18} {'corpus':<7} {'files':>6} {'MB':>7} {'seconds':>8} {'files/s':>9} {'MB/s':>7}"
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['engine']:<18} {row['corpus']:<7} {row['files']:>6} {row['megabytes']:>7.2f} "
            f"{row['seconds']:>8.3f} {row['files_per_second']:>9.1f} {row['megabytes_per_second']:>7.2f}"
        )
    print()
    for corpus, corpus_ratios in ratios.items():
        for name, value in corpus_ratios.items():
            print(f"{corpus:<7} {name:<40} {value:>7}")
    print()
    header = f"{'input':<32} {'engine':<21} {'MB':>13} {'seconds':>17} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for row in growth:
        megabytes = f"{row['megabytes'][0]} -> {row['megabytes'][1]}"
        seconds = f"{row['seconds'][0]} -> {row['seconds'][1]}"
        print(f"{row['shape']:<32} {row['engine']:<21} {megabytes:>13} {seconds:>17} {row['ratio']:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10, help="runs of each Rust measurement (default 10)")
    parser.add_argument(
        "--output", type=Path, default=ROOT / ".state/bench/metrics.json", help="JSON file to write"
    )
    args = parser.parse_args()

    load_before = os.getloadavg()
    everything = stdlib_files()
    long_files = [(path, content) for path, content in everything
                  if longest_statement_lines(content) >= LONG_STATEMENT_LINES]
    long_paths = {path for path, _ in long_files}
    corpora = {
        "main": [(path, content) for path, content in everything if path not in long_paths],
        "stdlib": everything,
        "long": long_files,
    }
    rows = throughput_rows(corpora, args.repeat)
    ratios = speedups(rows)
    growth = growth_rows(args.repeat)
    print_tables(rows, ratios, growth)

    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "stdlib": str(STDLIB),
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "aiswa_core": aiswa_core.__version__,
        "corpora": {
            "main": f"every .py file of the standard library less those with a statement of "
                    f"{LONG_STATEMENT_LINES} lines or more",
            "stdlib": "every .py file of the standard library, site-packages excluded",
            "long": sorted(long_paths),
        },
        "results": rows,
        "speedups": ratios,
        "growth": growth,
        "max_growth_ratio": MAX_GROWTH_RATIO,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.output}")

    too_steep = [row for row in growth if row["engine"] != "radon 6 raw analysis"
                 and row["ratio"] > MAX_GROWTH_RATIO]
    if too_steep:
        for row in too_steep:
            print(f"bench_metrics: {row['engine']} on '{row['shape']}' took {row['ratio']} times as "
                  f"long for twice the input (limit {MAX_GROWTH_RATIO})", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
