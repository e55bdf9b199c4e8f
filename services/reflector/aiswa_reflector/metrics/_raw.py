from __future__ import annotations

import io
import tokenize
from collections.abc import Iterable
from typing import NamedTuple

_BRACKETS_OPEN = frozenset("([{")
_BRACKETS_CLOSE = frozenset(")]}")
_LINE_ENDS = (tokenize.NL, tokenize.NEWLINE)
_NOT_IN_CHUNK = (tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)


class RawCounts(NamedTuple):
    loc: int
    lloc: int
    sloc: int
    comments: int
    multi: int
    blank: int
    single_comments: int


def count_raw(text: str) -> RawCounts:
    """Count lines as radon.raw.analyze does, in one tokenize pass.

    radon cuts the file into chunks. A chunk is the fewest lines after the previous
    chunk that tokenize on their own, which is one logical line with its
    continuation lines, or one blank or comment-only line. Every chunk ends with a
    NEWLINE token or with an NL token outside brackets, so one tokenization of the
    whole file finds the same chunks. radon instead tokenizes a chunk again for
    every line it adds, which is quadratic in the length of a multi-line statement.

    Raises tokenize.TokenError, or IndentationError for an inconsistent dedent,
    when ``text`` does not tokenize.
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    counter = _ChunkCounter(lines)
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    depth = 0
    chunk: list[tokenize.TokenInfo] = []
    for token in tokens:
        if token.type in _NOT_IN_CHUNK:
            continue
        chunk.append(token)
        if token.type == tokenize.OP:
            if token.string in _BRACKETS_OPEN:
                depth += 1
            elif token.string in _BRACKETS_CLOSE:
                depth = max(depth - 1, 0)
        elif token.type == tokenize.NEWLINE or (token.type == tokenize.NL and depth == 0):
            counter.add_chunk(chunk, token.start[0])
            chunk = []
    counter.add_chunk(chunk, len(lines))
    return counter.result()


class _ChunkCounter:
    def __init__(self, lines: list[str]) -> None:
        self._lines = lines
        self._next_line = 1
        self.lloc = self.sloc = self.comments = self.multi = self.blank = 0
        self.single_comments = 0

    def add_chunk(self, chunk: list[tokenize.TokenInfo], last_line: int) -> None:
        self.comments += sum(1 for token in chunk if token.type == tokenize.COMMENT)
        first_line = self._next_line
        if last_line < first_line:
            # A NEWLINE that tokenize adds at the end of a file without a final
            # line break, on a line whose chunk is already counted.
            return
        self._next_line = last_line + 1
        chunk_lines = self._lines[first_line - 1 : last_line]
        if _is_single(chunk, tokenize.COMMENT):
            self.single_comments += 1
        elif _is_single(chunk, tokenize.STRING):
            string = chunk[0]
            if string.start[0] == string.end[0]:
                self.single_comments += 1
            else:
                # radon counts every multi-line string statement as a docstring.
                blank = sum(1 for line in chunk_lines if not line.strip())
                self.blank += blank
                self.multi += len(chunk_lines) - blank
        else:
            blank = sum(1 for line in chunk_lines if not line.strip())
            self.blank += blank
            self.sloc += len(chunk_lines) - blank
        self.lloc += _logical_lines(chunk)

    def result(self) -> RawCounts:
        loc = self.sloc + self.blank + self.multi + self.single_comments
        return RawCounts(
            loc=loc,
            lloc=self.lloc,
            sloc=self.sloc,
            comments=self.comments,
            multi=self.multi,
            blank=self.blank,
            single_comments=self.single_comments,
        )


def _is_single(chunk: list[tokenize.TokenInfo], token_type: int) -> bool:
    if not chunk or chunk[0].type != token_type:
        return False
    return all(token.type in _LINE_ENDS for token in chunk[1:])


def _logical_lines(chunk: Iterable[tokenize.TokenInfo]) -> int:
    """Count logical lines in one chunk with radon's rule (radon.raw._logical).

    The chunk is split at semicolons. A part without a colon counts 1 unless it is
    empty. A part with a colon counts 1 when its last colon is the second-to-last
    token of radon's token list, and 2 otherwise. Only the last part's list ends
    with an ENDMARKER, so there ``if x:`` counts 1 and ``if x: return`` counts 2.
    In a part before a semicolon, a last colon followed by exactly one token counts 1.
    """
    parts: list[list[tokenize.TokenInfo]] = [[]]
    for token in chunk:
        if token.type == tokenize.OP and token.string == ";":
            parts.append([])
        elif token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
            parts[-1].append(token)
    total = 0
    last = len(parts) - 1
    for index, part in enumerate(parts):
        colon = _last_colon(part)
        if colon < 0:
            total += 1 if part else 0
            continue
        # radon's token list for the last part ends with ENDMARKER.
        length = len(part) + (1 if index == last else 0)
        total += 1 if colon == length - 2 else 2
    return total


def _last_colon(part: list[tokenize.TokenInfo]) -> int:
    for index in range(len(part) - 1, -1, -1):
        token = part[index]
        if token.type == tokenize.OP and token.string == ":":
            return index
    return -1
