"""The Rust core on hostile input: every failure is a per-file error, never a crash.

Where CPython decides the outcome (syntax errors, nesting limits), the Python
reference must agree on whether the file is an error.
"""

from __future__ import annotations

import math
import sysconfig
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiswa_reflector.metrics import analyze_source

aiswa_core = pytest.importorskip(
    "aiswa_core", reason="the Rust core is not installed; run scripts/build-rust-ext.sh"
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
RAW_FIELDS = ("loc", "lloc", "sloc", "comments", "multi", "blank", "single_comments")
FIFTY_MB = 50 * 1024 * 1024


def _line_count(text: str) -> int:
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return len(lines)


def _assert_matches_reference(source: bytes | str) -> dict:
    rust = aiswa_core.analyze_source("hostile.py", source)
    reference = analyze_source("hostile.py", source)
    assert bool(rust["error"]) == bool(reference.error), (rust["error"], reference.error)
    if not reference.error:
        for field in RAW_FIELDS:
            assert rust[field] == getattr(reference, field), field
        assert math.isclose(rust["halstead_volume"], reference.halstead_volume, abs_tol=0.01)
        assert math.isclose(
            rust["maintainability_index"], reference.maintainability_index, abs_tol=0.01
        )
        rust_functions = [tuple(function.values()) for function in rust["functions"]]
        reference_functions = [
            (f.name, f.qualified_name, f.is_method, f.line_start, f.line_end,
             f.cyclomatic_complexity, f.max_nesting, f.length)
            for f in reference.functions
        ]
        assert rust_functions == reference_functions
    return rust


@pytest.mark.parametrize(
    "source",
    [
        b"def f(:\n    pass\n",
        b"x = (1,\n",
        b"if x\n    pass\n",
        b"  x = 1\n",
        b"print 'hello'\n",
        b"x = 1 +\n",
        b"class:\n    pass\n",
        b"f(**a, *b)\n",
        b"x = '''never closed\n",
        b"def f():\nreturn 1\n",
        b"x = 1\n\tif y:\n        pass\n",
        b"type X = int\n",
        b"x = f'{a!}'\n",
        b"\xef\xbb\xbf\xef\xbb\xbfx = 1\n",
    ],
)
def test_syntax_errors_are_per_file_errors(source):
    result = _assert_matches_reference(source)
    assert result["error"]
    assert result["functions"] == []
    assert result["loc"] == 0


def test_invalid_utf8_reports_line_and_offset():
    source = b"x = 1\ny = '\xff\xfe'\n"
    result = _assert_matches_reference(source)
    assert result["error"] == "invalid utf-8 at line 2 (byte offset 11): invalid start byte"
    assert result["error"] == analyze_source("a.py", source).error


@pytest.mark.parametrize(
    "source",
    [b"# coding: no-such-codec\nx = 1\n", b"\xef\xbb\xbf# coding: latin-1\nx = 1\n"],
)
def test_bad_coding_cookie_matches_reference(source):
    result = _assert_matches_reference(source)
    assert result["error"].startswith("invalid encoding declaration: ")
    assert result["error"] == analyze_source("a.py", source).error


def test_latin1_cookie_decodes():
    result = _assert_matches_reference(b"# -*- coding: latin-1 -*-\ns = '\xe9t\xe9'\n")
    assert result["error"] == ""
    assert result["loc"] == 2


@pytest.mark.parametrize(
    ("source", "line"),
    [(b"x = 1\n\x00\n", 2), (b"\x00", 1), (b"s = 'a\x00b'\r\ny = 2\n", 1), (b"x = 1\r\n\r\n\x00", 3)],
)
def test_nul_bytes_report_line(source, line):
    result = _assert_matches_reference(source)
    assert result["error"] == f"invalid source: NUL byte at line {line}"


def _chain(kind: str, depth: int) -> str:
    builders = {
        "parens": lambda: "x = " + "(" * depth + "1" + ")" * depth + "\n",
        "lists": lambda: "x = " + "[" * depth + "]" * depth + "\n",
        "not": lambda: "x = " + "not " * depth + "y\n",
        "minus": lambda: "x = " + "-" * depth + "y\n",
        "sum": lambda: "x = 1" + " + 1" * depth + "\n",
        "attribute": lambda: "x = a" + ".b" * depth + "\n",
        "call": lambda: "x = f" + "()" * depth + "\n",
        "lambda": lambda: "x = " + "lambda: " * depth + "0\n",
        "ternary": lambda: "x = " + "a if b else " * depth + "c\n",
        "power": lambda: "x = 2" + " ** 2" * depth + "\n",
        "blocks": lambda: "".join(" " * level + "if x:\n" for level in range(depth))
        + " " * depth
        + "pass\n",
        "functions": lambda: "".join(" " * level + f"def f{level}():\n" for level in range(depth))
        + " " * depth
        + "return 1\n",
        "fstring": lambda: "x = f'{" + "(" * depth + "1" + ")" * depth + "}'\n",
    }
    return builders[kind]()


KINDS = ("parens", "lists", "not", "minus", "sum", "attribute", "call", "lambda", "ternary",
         "power", "blocks", "functions", "fstring")


@pytest.mark.parametrize("kind", KINDS)
def test_nesting_1000_levels_deep(kind):
    result = _assert_matches_reference(_chain(kind, 1000))
    if kind in ("parens", "lists", "blocks", "functions", "fstring"):
        # CPython allows 200 nested brackets and 99 levels of indentation.
        assert result["error"]
    else:
        assert result["error"] == ""


@pytest.mark.parametrize("kind", KINDS)
def test_nesting_beyond_cpython_limits(kind):
    result = aiswa_core.analyze_source("deep.py", _chain(kind, 5000))
    assert result["error"]
    assert result["functions"] == []


@pytest.mark.parametrize(
    ("kind", "allowed", "message"),
    [
        ("parens", 200, "SyntaxError at line 1: too many nested parentheses"),
        ("blocks", 99, "IndentationError at line 101: too many levels of indentation"),
        ("fstring", 199, "SyntaxError at line 1: too many nested parentheses"),
    ],
)
def test_nesting_limits_match_cpython_messages(kind, allowed, message):
    assert _assert_matches_reference(_chain(kind, allowed))["error"] == ""
    too_deep = _chain(kind, allowed + 1)
    assert _assert_matches_reference(too_deep)["error"] == message
    assert analyze_source("deep.py", too_deep).error == message


@pytest.mark.parametrize("kind", ["not", "minus", "sum", "attribute", "lambda", "parens"])
def test_fifty_megabyte_chain_fails_fast(kind):
    depth = FIFTY_MB // len(_chain(kind, 1))
    source = _chain(kind, depth).encode()
    started = time.perf_counter()
    result = aiswa_core.analyze_files([("chain.py", source)], threads=1)[0]
    elapsed = time.perf_counter() - started
    assert result["error"]
    assert elapsed < 30, f"{elapsed:.1f} s for a {len(source) / 1e6:.0f} MB chain"


def test_fifty_megabyte_file_is_measured():
    module = (STDLIB / "json" / "decoder.py").read_text()
    copies = FIFTY_MB // len(module) + 1
    text = module * copies
    started = time.perf_counter()
    result = aiswa_core.analyze_files([("big.py", text.encode())], threads=1)[0]
    elapsed = time.perf_counter() - started
    single = aiswa_core.analyze_source("decoder.py", module)
    assert len(text) >= FIFTY_MB
    assert result["error"] == ""
    assert result["loc"] == _line_count(text)
    assert result["sloc"] == single["sloc"] * copies
    assert len(result["functions"]) == len(single["functions"]) * copies
    # Linear time takes about 1 s at the measured 30-50 MB/s. The bound leaves room for
    # a loaded machine but not for quadratic time.
    assert elapsed < 60, f"{elapsed:.1f} s for {len(text) / 1e6:.0f} MB"


def test_long_flat_literal_is_linear():
    # radon's raw analysis is quadratic in the length of one multi-line statement.
    rows = 200_000
    text = "TABLE = {\n" + "".join(f"    'key{index}': {index},\n" for index in range(rows)) + "}\n"
    started = time.perf_counter()
    result = aiswa_core.analyze_source("table.py", text)
    elapsed = time.perf_counter() - started
    assert result["error"] == ""
    assert result["loc"] == rows + 2
    assert result["lloc"] == 2
    assert elapsed < 10, f"{elapsed:.1f} s for {len(text) / 1e6:.1f} MB"


# Random programs built from statements that exercise every counted construct.
_ATOMS = st.one_of(
    st.sampled_from(["a", "b", "x", "self.y", "items", "'x'", "b'x'", "1", "2.0", "True", "None", "..."]),
    # Python 3.11 does not allow the f-string's own quote inside it, so no nesting.
    st.sampled_from(["a", "x.y", "1 + b", "-a"]).map(lambda expr: f"f'{{{expr}}} and {{a!r:>5}}'"),
)
_EXPRESSIONS = st.recursive(
    _ATOMS,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "//", "**", "|", "and", "or", "<", "==", "in", "is not"]), inner)
        .map(lambda parts: f"({parts[0]} {parts[1]} {parts[2]})"),
        inner.map(lambda expr: f"(not {expr})"),
        inner.map(lambda expr: f"(-{expr})"),
        st.tuples(inner, inner, inner).map(lambda parts: f"({parts[0]} if {parts[1]} else {parts[2]})"),
        st.tuples(inner, inner).map(lambda parts: f"[{parts[0]} for i in {parts[1]} if i if a]"),
        inner.map(lambda expr: f"f({expr}, k={expr})"),
        inner.map(lambda expr: f"(lambda q: {expr})"),
        st.tuples(inner, inner).map(lambda parts: f"{{{parts[0]}: {parts[1]}}}"),
    ),
    max_leaves=5,
)
_NAMES = st.sampled_from(["f", "g", "method", "__init__", "run"])


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line if line else line for line in lines]


_SIMPLE = st.one_of(
    _EXPRESSIONS.map(lambda expr: [f"x = {expr}"]),
    _EXPRESSIONS.map(lambda expr: [f"x += {expr}  # note"]),
    _EXPRESSIONS.map(lambda expr: [f"assert {expr}, 'message'"]),
    _EXPRESSIONS.map(lambda expr: [f"return {expr}"]),
    _EXPRESSIONS.map(lambda expr: [f"x = {expr}; y = 1"]),
    st.just(["pass"]),
    st.just(["# a comment"]),
    st.just(['"""A docstring', "", 'on three lines."""']),
    st.just(['"one-line string"']),
    st.just([""]),
    st.just(["x = (1,", "     2)"]),
)


def _compound(statements: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
    # A block of only comments and blank lines is a syntax error, so each ends in `pass`.
    body = statements.map(lambda lines: [*lines, "pass"])
    return st.one_of(
        st.tuples(_EXPRESSIONS, body, body, body).map(
            lambda p: [f"if {p[0]}:", *_indent(p[1]), f"elif {p[0]}:", *_indent(p[2]), "else:", *_indent(p[3])]
        ),
        st.tuples(_EXPRESSIONS, body, body).map(
            lambda p: [f"for i in {p[0]}:", *_indent(p[1]), "else:", *_indent(p[2])]
        ),
        st.tuples(_EXPRESSIONS, body).map(lambda p: [f"while {p[0]}:", *_indent(p[1])]),
        st.tuples(body, body, body).map(
            lambda p: ["try:", *_indent(p[0]), "except ValueError:", *_indent(p[1]),
                       "except TypeError as e:", *_indent(p[2]), "finally:", "    pass"]
        ),
        st.tuples(_EXPRESSIONS, body).map(lambda p: [f"with {p[0]} as w:", *_indent(p[1])]),
        st.tuples(_EXPRESSIONS, body, body).map(
            lambda p: [f"match {p[0]}:", "    case [1, *rest]:", *_indent(_indent(p[1])),
                       "    case _:", *_indent(_indent(p[2]))]
        ),
        st.tuples(_NAMES, body).map(lambda p: ["@decorator", f"def {p[0]}(a, b=1, *c, d: int = 2):", *_indent(p[1])]),
        st.tuples(_NAMES, body).map(lambda p: [f"async def {p[0]}(a):", *_indent(p[1])]),
        st.tuples(_NAMES, body).map(lambda p: ["class C(Base, metaclass=M):", f"    def {p[0]}(self):", *_indent(_indent(p[1]))]),
    )


_BODY = st.recursive(
    st.lists(_SIMPLE, min_size=1, max_size=3).map(lambda parts: [line for part in parts for line in part]),
    lambda inner: st.lists(st.one_of(_SIMPLE, _compound(inner)), min_size=1, max_size=3).map(
        lambda parts: [line for part in parts for line in part]
    ),
    max_leaves=6,
)
_PROGRAMS = st.tuples(_BODY, st.booleans()).map(
    lambda p: "\n".join(p[0]) + ("\n" if p[1] else "")
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PROGRAMS)
def test_random_programs_match_reference(program):
    result = _assert_matches_reference(program)
    assert result["error"] == "", program
    assert result["loc"] == _line_count(program)
    assert all(function["cyclomatic_complexity"] >= 1 for function in result["functions"])
    assert all(function["line_end"] >= function["line_start"] for function in result["functions"])


@settings(max_examples=40, deadline=None)
@given(st.lists(_PROGRAMS, min_size=1, max_size=12))
def test_thread_count_does_not_change_results(programs):
    files = [(f"p{index}.py", program.encode()) for index, program in enumerate(programs)]
    one = aiswa_core.analyze_files(files, threads=1)
    several = aiswa_core.analyze_files(files, threads=3)
    default = aiswa_core.analyze_files(files)
    assert one == several
    assert one == default
    assert [result["path"] for result in one] == [path for path, _ in files]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(source):
    result = aiswa_core.analyze_source("random.py", source)
    assert isinstance(result["error"], str)
    if result["error"]:
        assert result["loc"] == 0
        assert result["functions"] == []


# Random text can contain escapes such as "\-" that CPython warns about when parsing.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab1 :()[]{}'\"\\#\n\t\x0c=+-.;,fr")), max_size=60))
def test_arbitrary_text_agrees_on_errors(source):
    _assert_matches_reference(source)


def test_match_name_after_semicolon_differs():
    # ruff_python_parser 0.0.10 takes `match` after `;` for a match statement, which
    # may not follow a semicolon, while CPython reads it as a name. docs/metrics.md
    # lists this difference. If this test fails, the parser was fixed, so drop it.
    source = "x = 1; match = 2\n"
    assert analyze_source("a.py", source).error == ""
    rust_error = aiswa_core.analyze_source("a.py", source)["error"]
    assert rust_error.startswith("SyntaxError at line 1: Compound statements")
