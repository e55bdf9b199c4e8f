from __future__ import annotations

import tokenize

from ._maintainability import maintainability_index
from ._model import FileMetrics, failed_file
from ._raw import RawCounts, count_raw
from ._source import SourceError, decode_source, parse_source
from ._tree import scan_tree


def analyze_source(path: str, source: bytes | str) -> FileMetrics:
    """Compute the metrics of one Python file, with radon 6.0.1's definitions.

    ``path`` is only stored in the result. ``source`` is the file's bytes, decoded
    as the interpreter does (byte order mark, PEP 263 coding cookie, else UTF-8),
    or text that is already decoded. Instead of raising, the function returns a
    FileMetrics whose ``error`` names the problem and its line, where known, when
    the source cannot be decoded, contains a NUL byte, does not parse or is nested
    too deeply for the parser.
    """
    try:
        text = decode_source(source)
        tree = parse_source(text, path)
        raw = _count_raw(text)
    except SourceError as exc:
        return failed_file(path, str(exc))
    scanned = scan_tree(tree)
    return FileMetrics(
        path=path,
        loc=raw.loc,
        lloc=raw.lloc,
        sloc=raw.sloc,
        comments=raw.comments,
        multi=raw.multi,
        blank=raw.blank,
        single_comments=raw.single_comments,
        maintainability_index=maintainability_index(
            scanned.halstead_volume,
            scanned.total_complexity,
            lloc=raw.lloc,
            sloc=raw.sloc,
            comment_lines=raw.comments + raw.multi,
        ),
        halstead_volume=scanned.halstead_volume,
        functions=scanned.functions,
    )


def _count_raw(text: str) -> RawCounts:
    try:
        return count_raw(text)
    except tokenize.TokenError as exc:
        message, (line, _) = exc.args
        raise SourceError(f"tokenize failed at line {line}: {message}") from None
    except SyntaxError as exc:
        # tokenize raises IndentationError for an inconsistent dedent.
        raise SourceError(f"tokenize failed at line {exc.lineno}: {exc.msg}") from None
