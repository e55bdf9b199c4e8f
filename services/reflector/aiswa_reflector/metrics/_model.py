from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FunctionMetrics:
    """Metrics of one function or method, with its position as radon reports it."""

    name: str
    # Enclosing class and function names joined by dots: "Class.method", "outer.inner".
    qualified_name: str
    is_method: bool
    # Line of the ``def`` keyword, radon's ``lineno``.
    line_start: int
    # radon's ``endline``: the last line of a node in the function's last statement.
    line_end: int
    cyclomatic_complexity: int
    # Deepest nesting of if/for/while/with/try/match blocks in the body, 0 when flat.
    max_nesting: int
    # line_end - line_start + 1.
    length: int


@dataclass(frozen=True, slots=True)
class FileMetrics:
    """Raw line counts, maintainability index, Halstead volume and functions of one file.

    ``error`` is non-empty when the file could not be decoded or parsed. The counts
    are then 0 and ``functions`` is empty.
    """

    path: str
    loc: int
    lloc: int
    sloc: int
    comments: int
    multi: int
    blank: int
    single_comments: int
    maintainability_index: float
    halstead_volume: float
    functions: tuple[FunctionMetrics, ...]
    error: str = ""


def failed_file(path: str, error: str) -> FileMetrics:
    return FileMetrics(
        path=path,
        loc=0,
        lloc=0,
        sloc=0,
        comments=0,
        multi=0,
        blank=0,
        single_comments=0,
        maintainability_index=0.0,
        halstead_volume=0.0,
        functions=(),
        error=error,
    )
