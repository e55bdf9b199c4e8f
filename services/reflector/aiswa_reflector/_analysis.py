from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import asdict
from statistics import fmean
from typing import Any

from aiswa_runtime.archive import ArchiveLimits, iter_files

from .duplicates import Duplicate
from .duplicates import find_duplicates as reference_duplicates
from .metrics import FileMetrics, FunctionMetrics, analyze_source

Analyzer = Callable[[str, bytes], FileMetrics]

ENGINES = ("rust", "python")
DEFAULT_ENGINE = "rust"


def engine_name() -> str:
    """Return the engine that AISWA_REFLECTOR_ENGINE names, "rust" when it is unset or empty."""
    return os.environ.get("AISWA_REFLECTOR_ENGINE") or DEFAULT_ENGINE


class RustAnalyzer:
    """The aiswa_core extension behind the reference's interface.

    Calling it measures one file. ``analyze_many`` measures a batch in parallel on
    every core, with the GIL released, and returns the results in input order.
    """

    def __init__(self, core: Any) -> None:
        self._core = core

    def __call__(self, path: str, content: bytes) -> FileMetrics:
        return _file_metrics(self._core.analyze_source(path, content))

    def analyze_many(self, files: list[tuple[str, bytes]]) -> list[FileMetrics]:
        return [_file_metrics(result) for result in self._core.analyze_files(files)]


def _file_metrics(result: dict[str, Any]) -> FileMetrics:
    functions = tuple(FunctionMetrics(**function) for function in result.pop("functions"))
    return FileMetrics(**result, functions=functions)


def analyzer() -> Analyzer:
    """Return the metrics engine that AISWA_REFLECTOR_ENGINE selects.

    "rust", the default, is the aiswa_core extension, which scripts/build-rust-ext.sh
    builds and installs. "python" is the reference implementation,
    aiswa_reflector.metrics. Both return the same FileMetrics. Raises RuntimeError
    when the engine is "rust" and aiswa_core cannot be imported, so that the
    reflector fails at start instead of falling back to the slower reference.
    """
    name = engine_name()
    if name == "python":
        return analyze_source
    if name == "rust":
        try:
            import aiswa_core
        except ImportError as exc:
            selected = (
                "AISWA_REFLECTOR_ENGINE=rust"
                if os.environ.get("AISWA_REFLECTOR_ENGINE")
                else "the default, as AISWA_REFLECTOR_ENGINE is unset"
            )
            raise RuntimeError(
                f"the metrics engine is 'rust' ({selected}), but the "
                f"aiswa_core extension cannot be imported: {exc}. Build and install it with "
                "scripts/build-rust-ext.sh, or set AISWA_REFLECTOR_ENGINE=python to use the "
                "Python reference"
            ) from exc
        return RustAnalyzer(aiswa_core)
    raise ValueError(
        f"AISWA_REFLECTOR_ENGINE={name!r} is unknown; use one of {', '.join(map(repr, ENGINES))}"
    )


# Shortest token sequence that counts as duplicated code.
DUPLICATE_MIN_TOKENS = 50


def find_duplicates(files: list[tuple[str, bytes]]) -> list[Duplicate]:
    """Find duplicated code across ``files`` with the selected engine.

    Both engines return the same pairs in the same order (tests/unit/test_duplicates.py).
    """
    if engine_name() == "rust":
        import aiswa_core

        return [Duplicate(*found)
                for found in aiswa_core.find_duplicates(files, min_tokens=DUPLICATE_MIN_TOKENS)]
    return reference_duplicates(files, min_tokens=DUPLICATE_MIN_TOKENS)


def python_sources(archive: bytes, limits: ArchiveLimits) -> list[tuple[str, bytes]]:
    """Return the archive's Python files, sorted by path."""
    return sorted(
        (path, content) for path, content in iter_files(archive, limits) if path.endswith(".py")
    )


def analyze_batch(files: Iterable[tuple[str, bytes]], analyze: Analyzer) -> list[FileMetrics]:
    """Measure ``files`` in input order, in parallel when the engine is the Rust core."""
    if isinstance(analyze, RustAnalyzer):
        return analyze.analyze_many(list(files))
    return [analyze(path, content) for path, content in files]


def summarize(results: list[FileMetrics], duplicates: int = 0) -> dict[str, Any]:
    parsed = [result for result in results if not result.error]
    complexities = [f.cyclomatic_complexity for r in parsed for f in r.functions]
    return {
        "files": len(results),
        "functions": len(complexities),
        "files_with_errors": len(results) - len(parsed),
        "sloc": sum(r.sloc for r in parsed),
        "mean_cyclomatic_complexity": round(fmean(complexities), 3) if complexities else 0.0,
        "max_cyclomatic_complexity": max(complexities, default=0),
        "mean_maintainability_index": (
            round(fmean(r.maintainability_index for r in parsed), 3) if parsed else 0.0
        ),
        "duplicates": duplicates,
    }


def file_row(run_id: str, result: FileMetrics) -> tuple[Any, ...]:
    return (run_id, result.path, result.loc, result.lloc, result.sloc, result.comments,
            result.multi, result.blank, result.single_comments,
            result.maintainability_index, result.halstead_volume, result.error)


def function_rows(run_id: str, result: FileMetrics) -> list[tuple[Any, ...]]:
    return [
        (run_id, result.path, f.qualified_name, f.name, f.is_method, f.line_start, f.line_end,
         f.cyclomatic_complexity, f.max_nesting, f.length)
        for f in result.functions
    ]


def as_dict(result: FileMetrics) -> dict[str, Any]:
    return asdict(result)
