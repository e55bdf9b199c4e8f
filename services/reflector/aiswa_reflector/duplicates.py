"""Token-based detection of duplicated code.

Each file becomes a sequence of normalized tokens from :mod:`tokenize`: every
identifier is ``ID``, every number and string is ``LIT``, keywords and operators
keep their text, and comments, line breaks and indentation are dropped. So a copy
whose names and constants were changed still matches.

Every window of ``min_tokens`` consecutive tokens gets a polynomial rolling hash
over the 64-bit FNV-1a hashes of the tokens. A window is paired with the most
recent earlier window that has the same hash and the same tokens, and consecutive
windows whose partners are consecutive too form one duplicate. A pair inside one
file whose two ranges overlap, such as the rows of a repetitive table, is not a
duplicate. Time and memory grow linearly with the number of tokens.

The Rust core implements the same algorithm as ``aiswa_core.find_duplicates``,
and both must return the same duplicates in the same order.
"""

from __future__ import annotations

import io
import keyword
import tokenize
from collections.abc import Sequence
from typing import NamedTuple

from .metrics._source import SourceError, decode_source

__all__ = ["Duplicate", "find_duplicates", "normalized_tokens"]

_MASK = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_ROLLING_BASE = 1_000_003
_DROPPED = frozenset(
    {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
)


class Duplicate(NamedTuple):
    """Two copies of a token sequence: file ``a`` is the earlier one in input order."""

    path_a: str
    line_start_a: int
    line_end_a: int
    path_b: str
    line_start_b: int
    line_end_b: int
    tokens: int


class _Token(NamedTuple):
    kind: int
    line_start: int
    line_end: int


def token_hash(text: str) -> int:
    """Return the 64-bit FNV-1a hash of a normalized token's UTF-8 text."""
    value = _FNV_OFFSET
    for byte in text.encode("utf-8"):
        value = ((value ^ byte) * _FNV_PRIME) & _MASK
    return value


def _normalized(token: tokenize.TokenInfo) -> str | None:
    if token.type in _DROPPED:
        return None
    if token.type == tokenize.NAME:
        return token.string if keyword.iskeyword(token.string) else "ID"
    if token.type in (tokenize.NUMBER, tokenize.STRING):
        return "LIT"
    if token.type == tokenize.ERRORTOKEN:
        return "ERR"
    return token.string


def normalized_tokens(source: bytes | str) -> list[_Token]:
    """Return the normalized tokens of one file, or [] if it does not decode or tokenize.

    ``source`` is decoded as :func:`aiswa_reflector.metrics.analyze_source` decodes it.
    A missing final line break is added, so that the last line tokenizes like the
    others.
    """
    try:
        text = decode_source(source)
    except SourceError:
        return []
    if not text.endswith("\n"):
        text += "\n"
    hashes: dict[str, int] = {}
    tokens = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            normalized = _normalized(token)
            if normalized is None:
                continue
            kind = hashes.get(normalized)
            if kind is None:
                kind = hashes[normalized] = token_hash(normalized)
            tokens.append(_Token(kind, token.start[0], token.end[0]))
    except (tokenize.TokenError, SyntaxError):
        # SyntaxError covers the IndentationError of an inconsistent dedent.
        return []
    return tokens


class _Run:
    """Consecutive matched windows: ``start_b`` in the current file pairs with
    ``start_a`` in file ``file_a``, for ``windows`` windows."""

    __slots__ = ("file_a", "start_a", "start_b", "windows")

    def __init__(self, file_a: int, start_a: int, start_b: int) -> None:
        self.file_a = file_a
        self.start_a = start_a
        self.start_b = start_b
        self.windows = 1


def find_duplicates(
    files: Sequence[tuple[str, bytes | str]], *, min_tokens: int = 50
) -> list[Duplicate]:
    """Find token sequences of at least ``min_tokens`` tokens that occur twice.

    ``files`` contains ``(path, content)`` pairs. Files that do not decode or tokenize
    are skipped. Duplicates come in the order in which their later copy starts.
    Raises ValueError if ``min_tokens`` is less than 1.
    """
    if min_tokens < 1:
        raise ValueError(f"min_tokens must be at least 1, got {min_tokens}")
    paths = [path for path, _ in files]
    token_lists = [normalized_tokens(content) for _, content in files]
    return _match(paths, token_lists, min_tokens)


def _match(paths: list[str], token_lists: list[list[_Token]], width: int) -> list[Duplicate]:
    top_power = pow(_ROLLING_BASE, width - 1, 1 << 64)
    latest: dict[int, tuple[int, int]] = {}
    duplicates: list[Duplicate] = []
    for file_b, tokens in enumerate(token_lists):
        if len(tokens) < width:
            continue
        value = 0
        for token in tokens[:width]:
            value = (value * _ROLLING_BASE + token.kind) & _MASK
        run: _Run | None = None
        for start_b in range(len(tokens) - width + 1):
            if start_b > 0:
                value = (value - tokens[start_b - 1].kind * top_power) & _MASK
                value = (value * _ROLLING_BASE + tokens[start_b + width - 1].kind) & _MASK
            partner = latest.get(value)
            latest[value] = (file_b, start_b)
            if (
                run is not None
                and partner is not None
                and partner[0] == run.file_a
                and run.start_a + (start_b - run.start_b) == partner[1]
                and token_lists[partner[0]][partner[1] + width - 1].kind
                == tokens[start_b + width - 1].kind
            ):
                run.windows += 1
                continue
            if run is not None:
                _report(paths, token_lists, file_b, run, width, duplicates)
                run = None
            if partner is not None:
                file_a, start_a = partner
                earlier = token_lists[file_a][start_a : start_a + width]
                later = tokens[start_b : start_b + width]
                if all(left.kind == right.kind for left, right in zip(earlier, later)):
                    run = _Run(file_a, start_a, start_b)
        if run is not None:
            _report(paths, token_lists, file_b, run, width, duplicates)
    return duplicates


def _report(
    paths: list[str],
    token_lists: list[list[_Token]],
    file_b: int,
    run: _Run,
    width: int,
    duplicates: list[Duplicate],
) -> None:
    length = run.windows + width - 1
    if run.file_a == file_b and run.start_a + length > run.start_b:
        return
    a = token_lists[run.file_a]
    b = token_lists[file_b]
    duplicates.append(
        Duplicate(
            path_a=paths[run.file_a],
            line_start_a=a[run.start_a].line_start,
            line_end_a=a[run.start_a + length - 1].line_end,
            path_b=paths[file_b],
            line_start_b=b[run.start_b].line_start,
            line_end_b=b[run.start_b + length - 1].line_end,
            tokens=length,
        )
    )
