"""AI-SWA's native code metrics and duplicate detection (the Rust core)."""

from typing import TypedDict

__version__: str

class FunctionMetricsDict(TypedDict):
    name: str
    qualified_name: str
    is_method: bool
    line_start: int
    line_end: int
    cyclomatic_complexity: int
    max_nesting: int
    length: int

class FileMetricsDict(TypedDict):
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
    functions: list[FunctionMetricsDict]
    error: str

def analyze_source(path: str, source: bytes | str) -> FileMetricsDict:
    """Compute the metrics of one Python file.

    ``source`` is the file's bytes, decoded as the interpreter does (byte order mark,
    PEP 263 coding cookie, else UTF-8), or already decoded text. Failures (undecodable
    bytes, NUL bytes, syntax errors, too deep nesting) are reported in ``error``.
    """

def analyze_files(
    files: list[tuple[str, bytes]], *, threads: int = 0
) -> list[FileMetricsDict]:
    """Compute the metrics of many ``(path, content)`` files in parallel, in input order.

    ``threads`` is the number of worker threads, 0 for one per logical CPU. The GIL is
    released while the files are analysed.
    """

def find_duplicates(
    files: list[tuple[str, bytes]], *, min_tokens: int = 50
) -> list[tuple[str, int, int, str, int, int, int]]:
    """Find token sequences of at least ``min_tokens`` tokens that occur twice.

    Identifiers count as one token kind and literals as another. Each result is
    ``(path_a, line_start_a, line_end_a, path_b, line_start_b, line_end_b, tokens)``,
    where ``a`` is the earlier copy in input order. Results are ordered by where the
    later copy starts. Raises ValueError if ``min_tokens`` is less than 1, or if there
    are 2**32 files or more, or a file of 2**32 bytes or more.
    """
