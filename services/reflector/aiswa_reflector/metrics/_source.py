from __future__ import annotations

import ast
import io
import tokenize


class SourceError(ValueError):
    """Source that cannot be decoded or parsed. The message names the problem and line."""


def decode_source(source: bytes | str) -> str:
    """Decode ``source`` as the interpreter would and normalize line endings to ``\\n``.

    Bytes follow PEP 263: a UTF-8 byte order mark or a coding cookie in the first two
    lines selects the encoding, and UTF-8 is the default. A ``str`` is taken as
    already decoded, less a leading byte order mark.
    """
    if isinstance(source, str):
        text = source.removeprefix("\ufeff")
    else:
        text = _decode_bytes(source)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise SourceError(f"invalid source: NUL byte at line {line}")
    try:
        # ast.parse encodes text to UTF-8, which fails on an unpaired surrogate.
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise SourceError(
            f"invalid source: unpaired surrogate {text[exc.start]!r} at line {line}"
        ) from None
    return text


def _decode_bytes(source: bytes) -> str:
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(source).readline)
    except SyntaxError as exc:
        if "invalid or missing encoding declaration" not in str(exc):
            raise SourceError(f"invalid encoding declaration: {exc}") from None
        # detect_encoding found no cookie and a first line that is not UTF-8:
        # decoding as UTF-8 below reports the exact line.
        encoding = "utf-8"
    try:
        return source.decode(encoding)
    except UnicodeDecodeError as exc:
        line = source.count(b"\n", 0, exc.start) + 1
        raise SourceError(
            f"invalid {exc.encoding} at line {line} (byte offset {exc.start}): {exc.reason}"
        ) from None
    except LookupError as exc:
        raise SourceError(f"invalid encoding declaration: {exc}") from None


def parse_source(text: str, path: str) -> ast.Module:
    """Parse ``text`` with :func:`ast.parse`, raising SourceError on any failure."""
    try:
        return ast.parse(text, filename=path)
    except SyntaxError as exc:
        where = f" at line {exc.lineno}" if exc.lineno else ""
        raise SourceError(f"{type(exc).__name__}{where}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        # CPython's parser raises these when nesting exceeds its stack limits, so
        # they mean "too deeply nested", not that the process is out of memory.
        raise SourceError(
            "code is nested too deeply for the Python parser (no line reported)"
        ) from None
    except ValueError as exc:
        raise SourceError(f"invalid source: {exc}") from None
