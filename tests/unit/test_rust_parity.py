"""The Rust core (aiswa_core) against the Python reference (aiswa_reflector.metrics).

Both engines measure every .py file of the running interpreter's standard library,
test suites included, site-packages excluded. Each difference must be listed in
KNOWN_DIFFERENCES, which the table "Differences on the standard library" of
docs/metrics.md reproduces.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sysconfig
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from aiswa_reflector._analysis import analyzer
from aiswa_reflector.metrics import FileMetrics, analyze_source

aiswa_core = pytest.importorskip(
    "aiswa_core", reason="the Rust core is not installed; run scripts/build-rust-ext.sh"
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
RAW_FIELDS = ("loc", "lloc", "sloc", "comments", "multi", "blank", "single_comments")
FUNCTION_FIELDS = (
    "name",
    "qualified_name",
    "is_method",
    "line_start",
    "line_end",
    "cyclomatic_complexity",
    "max_nesting",
    "length",
)
# Maintainability index and Halstead volume may differ by rounding only.
TOLERANCE = 0.01

# (path relative to the standard library, metric) -> reason. Empty for CPython
# 3.11.7: every file agrees. Error messages are compared up to the first colon
# ("SyntaxError at line 2"), because ruff's parser words syntax errors
# differently from CPython's. docs/metrics.md lists that difference.
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {}


def _stdlib_files() -> list[tuple[str, bytes]]:
    paths = sorted(
        path for path in STDLIB.rglob("*.py") if "site-packages" not in path.relative_to(STDLIB).parts
    )
    return [(str(path.relative_to(STDLIB)), path.read_bytes()) for path in paths]


def _reference(files: list[tuple[str, bytes]]) -> list[FileMetrics]:
    return [analyze_source(path, content) for path, content in files]


def _reference_parallel(files: list[tuple[str, bytes]]) -> list[FileMetrics]:
    workers = os.cpu_count() or 1
    chunks = [files[index::workers] for index in range(workers)]
    # Spawned, not forked: a forked child inherits the gRPC objects of earlier tests, and
    # collecting them in the child has hung it at full CPU.
    with ProcessPoolExecutor(max_workers=workers,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_reference, chunks))
    results: list[FileMetrics | None] = [None] * len(files)
    for index, part in enumerate(parts):
        results[index::workers] = part
    return results  # type: ignore[return-value]


def _error_kind(error: str) -> str:
    return error.split(":", 1)[0]


def _differences(rust: dict, reference: FileMetrics) -> list[tuple[str, str]]:
    """Return (metric, detail) pairs for every metric on which the engines differ."""
    if rust["error"] or reference.error:
        if _error_kind(rust["error"]) != _error_kind(reference.error):
            return [("error", f"rust {rust['error']!r}, reference {reference.error!r}")]
        return []
    found = []
    for field in RAW_FIELDS:
        if rust[field] != getattr(reference, field):
            found.append((field, f"rust {rust[field]}, reference {getattr(reference, field)}"))
    for field in ("maintainability_index", "halstead_volume"):
        if not math.isclose(rust[field], getattr(reference, field), abs_tol=TOLERANCE):
            found.append((field, f"rust {rust[field]}, reference {getattr(reference, field)}"))
    rust_functions = [tuple(function[field] for field in FUNCTION_FIELDS) for function in rust["functions"]]
    reference_functions = [
        tuple(getattr(function, field) for field in FUNCTION_FIELDS) for function in reference.functions
    ]
    if rust_functions != reference_functions:
        unequal = [pair for pair in zip(rust_functions, reference_functions) if pair[0] != pair[1]]
        found.append(
            (
                "functions",
                f"{len(rust_functions)} vs {len(reference_functions)} functions, first unequal "
                f"(rust, reference): {unequal[:1]}",
            )
        )
    return found


@pytest.fixture(scope="module")
def stdlib_results() -> tuple[list[tuple[str, bytes]], list[dict], list[FileMetrics]]:
    files = _stdlib_files()
    rust = aiswa_core.analyze_files(files)
    reference = _reference_parallel(files)
    return files, rust, reference


def test_stdlib_corpus_is_large(stdlib_results):
    files, rust, reference = stdlib_results
    assert len(files) > 1000
    assert len(rust) == len(files)
    assert len(reference) == len(files)
    assert [result["path"] for result in rust] == [path for path, _ in files]


def test_stdlib_metrics_equal_reference(stdlib_results):
    files, rust, reference = stdlib_results
    found = {}
    for rust_result, reference_result in zip(rust, reference):
        for metric, detail in _differences(rust_result, reference_result):
            found[(rust_result["path"], metric)] = detail
    unexpected = {key: detail for key, detail in found.items() if key not in KNOWN_DIFFERENCES}
    stale = sorted(key for key in KNOWN_DIFFERENCES if key not in found)
    shown = "\n".join(f"{path} {metric}: {detail}" for (path, metric), detail in list(unexpected.items())[:20])
    assert not unexpected, f"{len(unexpected)} differences not in KNOWN_DIFFERENCES:\n{shown}"
    assert not stale, f"listed differences that no longer occur: {stale}"


def test_stdlib_functions_measured(stdlib_results):
    _, rust, _ = stdlib_results
    functions = sum(len(result["functions"]) for result in rust)
    parsed = sum(1 for result in rust if not result["error"])
    assert functions > 50_000
    assert parsed > len(rust) - 20


def test_rust_engine_returns_reference_dataclasses(monkeypatch):
    monkeypatch.setenv("AISWA_REFLECTOR_ENGINE", "rust")
    analyze = analyzer()
    path = "json/decoder.py"
    content = (STDLIB / path).read_bytes()
    rust = analyze(path, content)
    reference = analyze_source(path, content)
    assert isinstance(rust, FileMetrics)
    assert rust.functions == reference.functions
    assert rust == reference


def test_rust_engine_reports_errors_as_values(monkeypatch):
    monkeypatch.setenv("AISWA_REFLECTOR_ENGINE", "rust")
    result = analyzer()("bad.py", b"def f(:\n    pass\n")
    assert result.error.startswith("SyntaxError at line 1")
    assert result.functions == ()
    assert result.loc == 0


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x = 1\n\ud800\n", "invalid source: unpaired surrogate '\\ud800' at line 2"),
        ("\ufeffx = 1\r\ny = '\udcff'\n", "invalid source: unpaired surrogate '\\udcff' at line 2"),
        ("x = '\ud800'\x00\n", "invalid source: NUL byte at line 1"),
    ],
)
def test_unencodable_text_error_matches_reference(source, expected):
    assert analyze_source("a.py", source).error == expected
    assert aiswa_core.analyze_source("a.py", source)["error"] == expected
