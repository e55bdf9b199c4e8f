"""Duplicate detection: the Python implementation and the Rust core agree and are right."""

from __future__ import annotations

import sysconfig
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiswa_reflector.duplicates import Duplicate, find_duplicates, normalized_tokens

aiswa_core = pytest.importorskip(
    "aiswa_core", reason="the Rust core is not installed; run scripts/build-rust-ext.sh"
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])

# 17 lines, about 110 tokens. Placed at line 3 of ORIGINAL and line 4 of COPY below.
BLOCK = textwrap.dedent(
    '''\
    def merge_ranges(ranges, gap=0):
        """Merge overlapping ranges."""
        merged = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1] + gap:
                last_start, last_end = merged[-1]
                merged[-1] = (last_start, max(last_end, end))
            else:
                merged.append((start, end))
        total = 0
        for start, end in merged:
            total += end - start
        if total > 1000:
            raise ValueError("ranges too long: %d" % total)
        while len(merged) > 10 and merged[0][1] - merged[0][0] < gap:
            merged.pop(0)
        return merged, total
    '''
)
RENAMED = (
    BLOCK.replace("merge_ranges", "join_spans")
    .replace("ranges", "spans")
    .replace("merged", "result")
    .replace("total", "size")
    .replace("1000", "5")
    .replace('"ranges too long: %d"', "'bad'")
)
ORIGINAL = "import os\n\n" + BLOCK + "\n\nclass Other:\n    pass\n"
COPY = "x = [1, 2]\ny = {'a': x}\n\n" + BLOCK + "\nprint(y)\n"
BLOCK_LINES = BLOCK.count("\n")


def _both(files, min_tokens):
    python = [tuple(duplicate) for duplicate in find_duplicates(files, min_tokens=min_tokens)]
    rust = aiswa_core.find_duplicates(files, min_tokens=min_tokens)
    return python, rust


def _stdlib_package(name: str) -> list[tuple[str, bytes]]:
    return [
        (str(path.relative_to(STDLIB)), path.read_bytes())
        for path in sorted((STDLIB / name).rglob("*.py"))
    ]


@pytest.mark.parametrize(
    ("package", "min_tokens"),
    [("json", 20), ("email", 50), ("asyncio", 50), ("lib2to3", 30), ("test/test_asyncio", 40)],
)
def test_python_and_rust_agree_on_stdlib(package, min_tokens):
    files = _stdlib_package(package)
    python, rust = _both(files, min_tokens)
    assert python, f"no duplicates in {package}, so agreement proves nothing"
    assert python == rust
    assert all(duplicate[-1] >= min_tokens for duplicate in python)


def test_planted_copy_found_with_exact_lines():
    files = [("original.py", ORIGINAL.encode()), ("copy.py", COPY.encode())]
    python, rust = _both(files, min_tokens=50)
    block_tokens = len(normalized_tokens(BLOCK))
    expected = ("original.py", 3, 2 + BLOCK_LINES, "copy.py", 4, 3 + BLOCK_LINES, block_tokens)
    assert python == [expected]
    assert rust == [expected]


def test_renamed_copy_is_found():
    files = [("original.py", ORIGINAL.encode()), ("renamed.py", ("z = 3\n" + RENAMED).encode())]
    python, rust = _both(files, min_tokens=50)
    assert python == rust
    assert len(python) == 1
    duplicate = Duplicate(*python[0])
    assert (duplicate.path_a, duplicate.line_start_a) == ("original.py", 3)
    assert (duplicate.path_b, duplicate.line_start_b) == ("renamed.py", 2)
    assert duplicate.line_end_b == 1 + BLOCK_LINES


def test_nothing_below_min_tokens():
    shared = "value = compute(alpha, beta)\n"
    shared_tokens = len(normalized_tokens(shared))
    # The tokens before the shared line differ (`pass` against a literal).
    files = [("a.py", ("pass\n" + shared).encode()), ("b.py", ("b = 1\n" + shared).encode())]
    at_length, rust_at_length = _both(files, min_tokens=shared_tokens)
    assert at_length == rust_at_length == [("a.py", 2, 2, "b.py", 2, 2, shared_tokens)]
    above, rust_above = _both(files, min_tokens=shared_tokens + 1)
    assert above == []
    assert rust_above == []


def test_repetitive_table_is_not_a_duplicate():
    table = "TABLE = [\n" + "".join(f"    ({index}, 'n{index}'),\n" for index in range(200)) + "]\n"
    python, rust = _both([("table.py", table.encode())], min_tokens=20)
    assert python == []
    assert rust == []


def test_copy_within_one_file_is_found():
    source = BLOCK + "\nSEPARATOR = None\n\n" + BLOCK.replace("merge_ranges", "again")
    python, rust = _both([("twice.py", source.encode())], min_tokens=50)
    assert python == rust
    assert [(d[0], d[1], d[3], d[4]) for d in python] == [("twice.py", 1, "twice.py", BLOCK_LINES + 4)]


def test_untokenizable_files_are_skipped():
    files = [
        ("original.py", ORIGINAL.encode()),
        ("open_string.py", b'x = """never closed\n' + BLOCK.encode()),
        ("latin.py", b"# coding: uft-8\n" + BLOCK.encode()),
        ("copy.py", COPY.encode()),
    ]
    python, rust = _both(files, min_tokens=50)
    assert python == rust
    assert [(d[0], d[3]) for d in python] == [("original.py", "copy.py")]


def test_min_tokens_below_one_is_rejected():
    with pytest.raises(ValueError, match="at least 1"):
        find_duplicates([], min_tokens=0)
    with pytest.raises(ValueError, match="at least 1"):
        aiswa_core.find_duplicates([], min_tokens=0)


# Lines that tokenize at module level, some sharing tokens after normalization.
_LINES = st.sampled_from(
    [
        "x = a + b\n",
        "y = c + d\n",
        "total += value * 2\n",
        "if ready:\n    run(1, 'a')\n",
        "if done:\n    stop(2, 'b')\n",
        "items = [i for i in range(10) if i]\n",
        "# a comment\n",
        "\n",
        "def f(a, b=1):\n    return a - b\n",
        "print('x', end='')\n",
    ]
)
_FILES = st.lists(st.lists(_LINES, max_size=40).map("".join), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(_FILES, st.integers(min_value=1, max_value=15), st.booleans())
def test_random_files_agree(texts, min_tokens, with_bad_file):
    files = [(f"f{index}.py", text.encode()) for index, text in enumerate(texts)]
    if with_bad_file:
        files.insert(len(files) // 2, ("bad.py", b'x = """never closed\n' + texts[0].encode()))
    python, rust = _both(files, min_tokens)
    assert python == rust
    for duplicate in python:
        assert duplicate[-1] >= min_tokens
        assert duplicate[1] <= duplicate[2]
        assert duplicate[4] <= duplicate[5]
        assert "bad.py" not in (duplicate[0], duplicate[3])
