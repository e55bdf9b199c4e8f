from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import asdict
from statistics import fmean
from typing import Any

from aiswa_runtime.archive import ArchiveLimits, iter_files

from .metrics import FileMetrics, FunctionMetrics, analyze_source

Analyzer = Callable[[str, bytes], FileMetrics]


def engine_name() -> str:
    return os.environ.get("AISWA_REFLECTOR_ENGINE", "python")


def analyzer() -> Analyzer:
    """Return the metrics engine that AISWA_REFLECTOR_ENGINE selects.

    "python" is the reference implementation, aiswa_reflector.metrics. "rust" is the
    aiswa_core extension, which scripts/build-rust-ext.sh builds and installs. Both
    return the same FileMetrics.
    """
    name = engine_name()
    if name == "python":
        return analyze_source
    if name == "rust":
        try:
            import aiswa_core
        except ImportError as exc:
            raise RuntimeError(
                "AISWA_REFLECTOR_ENGINE=rust needs the aiswa_core extension, which is not "
                f"installed ({exc}); build it with scripts/build-rust-ext.sh"
            ) from exc

        def analyze_with_rust(path: str, content: bytes) -> FileMetrics:
            result = aiswa_core.analyze_source(path, content)
            functions = tuple(FunctionMetrics(**function) for function in result.pop("functions"))
            return FileMetrics(**result, functions=functions)

        return analyze_with_rust
    raise ValueError(f"AISWA_REFLECTOR_ENGINE={name!r} is unknown; use 'python' or 'rust'")


def python_sources(archive: bytes, limits: ArchiveLimits) -> list[tuple[str, bytes]]:
    """Return the archive's Python files, sorted by path."""
    return sorted(
        (path, content) for path, content in iter_files(archive, limits) if path.endswith(".py")
    )


def analyze_batch(files: Iterable[tuple[str, bytes]], analyze: Analyzer) -> list[FileMetrics]:
    return [analyze(path, content) for path, content in files]


def summarize(results: list[FileMetrics]) -> dict[str, Any]:
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
