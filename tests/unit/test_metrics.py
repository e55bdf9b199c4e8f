"""Reflector metrics engine: hand-computed values, hostile inputs and properties."""

from __future__ import annotations

import math
import textwrap
import time

import pytest
import radon.complexity
import radon.metrics
import radon.raw
import radon.visitors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiswa_reflector.metrics import FileMetrics, FunctionMetrics, analyze_source


def _analyze(code: str) -> FileMetrics:
    result = analyze_source("sample.py", textwrap.dedent(code).encode())
    assert result.error == ""
    return result


def _function(result: FileMetrics, qualified_name: str) -> FunctionMetrics:
    matches = [f for f in result.functions if f.qualified_name == qualified_name]
    assert len(matches) == 1, [f.qualified_name for f in result.functions]
    return matches[0]


def _complexity(code: str, qualified_name: str) -> int:
    return _function(_analyze(code), qualified_name).cyclomatic_complexity


def _mi(volume: float, complexity: int, lloc: int, comment_percent: float) -> float:
    unscaled = (
        171
        - 5.2 * math.log(volume)
        - 0.23 * complexity
        - 16.2 * math.log(lloc)
        + 50 * math.sin(math.sqrt(2.46 * math.radians(comment_percent)))
    )
    return min(max(unscaled * 100 / 171, 0.0), 100.0)


# Cyclomatic complexity: 1 plus the decision points of the function's own body.

COMPLEXITY_CASES = {
    "straight line": (
        """
        def f():
            return 1
        """,
        "f",
        1,
    ),
    "if elif else": (
        """
        def f(x):
            if x > 0:
                return 1
            elif x < 0:
                return -1
            else:
                return 0
        """,
        "f",
        3,  # if 1, elif 1, else 0
    ),
    "for else and while": (
        """
        def f(items):
            for item in items:
                if item:
                    break
            else:
                return None
            while items:
                items.pop()
            return item
        """,
        "f",
        5,  # for 1 + its else 1, if 1, while 1
    ),
    "while else": (
        """
        def f(n):
            while n:
                n -= 1
            else:
                n = 0
        """,
        "f",
        3,
    ),
    "boolean operators": (
        """
        def f(a, b, c, d):
            return a and b and c or d
        """,
        "f",
        4,  # (a and b and c) has 2 extra operands, (... or d) has 1
    ),
    "comprehensions": (
        """
        def f(rows):
            flat = [cell for row in rows for cell in row]
            return {c for c in flat if c if c > 1}
        """,
        "f",
        6,  # two for clauses 1 each, a third for clause 1 plus its two ifs
    ),
    "generator and dict comprehension": (
        """
        def f(rows):
            return any(r for r in rows), {k: v for k, v in rows if v}
        """,
        "f",
        4,
    ),
    "try except else finally": (
        """
        def f():
            try:
                g()
            except ValueError:
                pass
            except (TypeError, KeyError):
                pass
            else:
                h()
            finally:
                k()
        """,
        "f",
        4,  # two handlers and the else, and finally counts nothing
    ),
    "try finally only": (
        """
        def f():
            try:
                g()
            finally:
                k()
        """,
        "f",
        1,
    ),
    "except star": (
        """
        def f():
            try:
                g()
            except* ValueError:
                pass
            except* TypeError:
                pass
        """,
        "f",
        3,  # radon 6.0.1 gives 1 here: docs/metrics.md lists the difference
    ),
    "match with wildcard": (
        """
        def f(command):
            match command:
                case "go":
                    return 1
                case "stop" | "halt":
                    return 2
                case _:
                    return 0
        """,
        "f",
        3,  # three cases less the wildcard
    ),
    "match without wildcard": (
        """
        def f(command):
            match command:
                case [x, *rest] if x and rest:
                    return 1
                case {"k": v}:
                    return v
        """,
        "f",
        4,  # two cases, and the guard's boolean operator adds 1
    ),
    "match with capture": (
        """
        def f(command):
            match command:
                case 1:
                    return 1
                case other:
                    return other
        """,
        "f",
        2,  # a bare capture pattern is a catch-all like _
    ),
    "lambda": (
        """
        def f(items):
            key = lambda item: item.size if item else 0
            return sorted(items, key=key)
        """,
        "f",
        2,  # the lambda counts nothing, its conditional expression counts 1
    ),
    "assert": (
        """
        def f(x, y):
            assert x and y, "both are needed"
        """,
        "f",
        2,  # assert counts 1 and its expression is not examined
    ),
    "with counts nothing": (
        """
        def f(path):
            with open(path) as handle:
                return handle.read()
        """,
        "f",
        1,
    ),
    "async for and async with": (
        """
        async def f(stream):
            async with stream:
                async for chunk in stream:
                    yield chunk
        """,
        "f",
        2,
    ),
    "decorators and defaults are outside the body": (
        """
        @register(a or b)
        def f(x=1 if c else 2):
            return x
        """,
        "f",
        1,
    ),
}


@pytest.mark.parametrize("code, name, expected", COMPLEXITY_CASES.values(), ids=COMPLEXITY_CASES)
def test_complexity_hand_computed(code: str, name: str, expected: int) -> None:
    assert _complexity(code, name) == expected


def test_nested_function_counted_separately() -> None:
    result = _analyze(
        """
        def outer(a):
            if a:
                pass
            def inner(b):
                if b:
                    return 1
                return 2 if b else 3
            return inner
        """
    )
    outer = _function(result, "outer")
    inner = _function(result, "outer.inner")
    assert outer.cyclomatic_complexity == 2
    assert inner.cyclomatic_complexity == 3
    assert inner.name == "inner"
    assert not inner.is_method
    assert outer.line_start == 2
    assert outer.line_end == 9
    assert outer.length == 8
    assert inner.line_start == 5
    assert inner.line_end == 8
    assert inner.length == 4


def test_class_methods_and_nested_classes() -> None:
    result = _analyze(
        """
        class Shape:
            def area(self):
                return 0

            class Unit:
                def scale(self, k):
                    return k or 1

        def make():
            class Local:
                def build(self):
                    def helper():
                        return 1 if self else 2
                    return helper
            return Local
        """
    )
    names = [f.qualified_name for f in result.functions]
    assert names == ["Shape.area", "Shape.Unit.scale", "make", "make.Local.build",
                     "make.Local.build.helper"]
    assert _function(result, "Shape.area").is_method
    scale = _function(result, "Shape.Unit.scale")
    assert scale.is_method
    assert scale.name == "scale"
    assert scale.cyclomatic_complexity == 2
    assert _function(result, "make.Local.build").is_method
    assert not _function(result, "make").is_method
    assert not _function(result, "make.Local.build.helper").is_method
    assert _function(result, "make.Local.build.helper").cyclomatic_complexity == 2


def test_end_line_stops_at_trailing_nested_def() -> None:
    # radon's end line is the last line number of a node in the function's last
    # statement, and it does not look into nested functions, classes or asserts.
    result = _analyze(
        """
        def factory():
            x = 1
            def made():
                return x

        def checked(x):
            y = x
            assert y

        def call():
            return g(
                1,
                2,
            )
        """
    )
    factory = _function(result, "factory")
    assert factory.line_start == 2
    assert factory.line_end == 2
    assert factory.length == 1
    assert _function(result, "factory.made").line_end == 5
    assert _function(result, "checked").line_end == 7
    assert _function(result, "call").line_end == 14  # line of the argument 2


def test_decorated_function_starts_at_def() -> None:
    result = _analyze(
        """
        @property
        @other
        def f(self):
            return 1
        """
    )
    assert _function(result, "f").line_start == 4


# Maximum nesting of block statements inside a function body.

NESTING_CASES = {
    "flat": (
        """
        def f(x):
            y = [v for v in x if v]
            return lambda: y
        """,
        0,
    ),
    "single if": (
        """
        def f(x):
            if x:
                return 1
        """,
        1,
    ),
    "five levels": (
        """
        def f(x):
            for a in x:
                if a:
                    with g():
                        try:
                            pass
                        except E:
                            while a:
                                pass
                elif b:
                    pass
            return x
        """,
        5,
    ),
    "elif chain stays at one level": (
        """
        def f(x):
            if x == 1:
                pass
            elif x == 2:
                pass
            elif x == 3:
                if x:
                    pass
        """,
        2,
    ),
    "else then if is deeper": (
        """
        def f(x):
            if x == 1:
                pass
            else:
                if x == 2:
                    pass
        """,
        2,
    ),
    "match and case body": (
        """
        def f(x):
            match x:
                case 1:
                    if x:
                        pass
        """,
        2,
    ),
    "async blocks and except star": (
        """
        async def f(x):
            async with x:
                async for y in x:
                    try:
                        pass
                    except* ValueError:
                        pass
        """,
        3,
    ),
}


@pytest.mark.parametrize("code, expected", NESTING_CASES.values(), ids=NESTING_CASES)
def test_max_nesting_hand_computed(code: str, expected: int) -> None:
    assert _function(_analyze(code), "f").max_nesting == expected


def test_nested_function_nesting_starts_over() -> None:
    result = _analyze(
        """
        def f(x):
            if x:
                def g(y):
                    if y:
                        pass
                return g
        """
    )
    assert _function(result, "f").max_nesting == 1
    assert _function(result, "f.g").max_nesting == 1


def test_deep_block_nesting_within_parser_limit() -> None:
    # CPython's tokenizer allows 100 indentation levels: the def and 98 ifs.
    lines = ["def f(x):"]
    lines += [" " * (level + 1) + "if x:" for level in range(98)]
    lines.append(" " * 99 + "pass")
    result = analyze_source("deep.py", "\n".join(lines) + "\n")
    assert result.error == ""
    assert result.functions[0].max_nesting == 98
    assert result.functions[0].cyclomatic_complexity == 99


# Raw line counts.

RAW_SAMPLE = '''\
"""Module docstring
spanning two lines."""

# A comment line
import os  # trailing comment

x = [
    1,  # one

    2,
]
def f(): return 1; y = 2
'''


def test_raw_counts_hand_computed() -> None:
    result = analyze_source("raw.py", RAW_SAMPLE)
    assert result.loc == 12
    assert result.sloc == 6  # import, the five-line list less its blank line, def
    assert result.blank == 3  # lines 3 and 6, and the blank line inside the list
    assert result.multi == 2  # the two-line docstring
    assert result.single_comments == 1
    assert result.comments == 3
    # docstring 1, import 1, list 1, and the def line 3: "def f(): return 1"
    # counts 2 (code after a colon) and "y = 2" counts 1.
    assert result.lloc == 6


def test_raw_counts_compound_statements() -> None:
    result = analyze_source(
        "compound.py",
        "if x:\n    pass\nif y: z = 1\n'''one line string'''\nw = '''a\nb'''\n",
    )
    assert result.loc == 6
    assert result.lloc == 1 + 1 + 2 + 1 + 1
    assert result.single_comments == 1  # a one-line string statement
    assert result.multi == 0  # the multi-line string is part of an assignment
    assert result.sloc == 5


def test_crlf_and_cr_line_endings_count_like_lf() -> None:
    lf = analyze_source("a.py", b"x = 1\n\n# c\ny = 2\n")
    crlf = analyze_source("a.py", b"x = 1\r\n\r\n# c\r\ny = 2\r\n")
    cr = analyze_source("a.py", b"x = 1\r\r# c\ry = 2\r")
    assert lf.loc == 4
    assert crlf == lf
    assert cr == lf


def test_form_feed_is_not_a_line_break() -> None:
    # radon counts 2 blank lines for "\f\n", because str.splitlines() splits at
    # form feeds. The engine counts the interpreter's lines.
    result = analyze_source("ff.py", "x = 1\n\f\ny = 2\n")
    assert result.loc == 3
    assert result.blank == 1


def test_file_without_final_newline() -> None:
    result = analyze_source("a.py", "x = 1\n   ")
    assert result.loc == 2
    assert result.sloc == 1
    assert result.blank == 1


# Halstead volume: (N1 + N2) * log2(n1 + n2).


def test_halstead_volume_hand_computed() -> None:
    # Operators Add and Mult. Operands a, the node b * 2, b and 2.
    result = analyze_source("h.py", "x = a + b * 2\n")
    assert result.halstead_volume == pytest.approx(6 * math.log2(6))


def test_halstead_unary_and_compare() -> None:
    # USub with operand x. Lt with operands 1 and the node -x.
    result = analyze_source("h.py", "def f(x):\n    return -x < 1\n")
    assert result.halstead_volume == pytest.approx(5 * math.log2(5))


def test_halstead_operands_equal_by_name() -> None:
    # x, self.x and "x" are one operand, and the inner sum is another.
    result = analyze_source("h.py", 'y = x + self.x + "x"\n')
    assert result.halstead_volume == pytest.approx(6 * math.log2(3))


def test_halstead_operands_distinct_per_function() -> None:
    result = analyze_source("h.py", "def f():\n    return a + 1\ndef g():\n    return a + 1\n")
    assert result.halstead_volume == pytest.approx(6 * math.log2(5))


def test_halstead_skips_function_header() -> None:
    result = analyze_source("h.py", "@dec(a + b)\ndef f(x=-1, *, y: int = 2 * 3) -> int:\n    return x\n")
    assert result.halstead_volume == 0.0


def test_halstead_counts_assert_and_class_header() -> None:
    result = analyze_source("h.py", "class C(Base[a | b]):\n    assert not c\n")
    # BitOr with operands a and b, Not with operand c: N = 2 + 3, n = 2 + 3.
    assert result.halstead_volume == pytest.approx(5 * math.log2(5))


# Maintainability index.


def test_maintainability_index_hand_computed() -> None:
    result = analyze_source("mi.py", "x = a + b * 2\n")
    assert result.maintainability_index == pytest.approx(
        _mi(6 * math.log2(6), complexity=1, lloc=1, comment_percent=0)
    )
    assert result.maintainability_index == pytest.approx(91.53, abs=0.01)


def test_maintainability_index_counts_radon_total_complexity() -> None:
    # radon's file complexity adds module code (the if), module-level functions
    # (f: 1), class bodies (the conditional expression) and each method's full
    # complexity (m: 2). The closure g and the nested class D add nothing.
    code = textwrap.dedent(
        """\
        # comment
        if a:
            x = a + b
        def f(x):
            if x:
                pass
            def g(y):
                if y:
                    pass
        class C:
            k = 1 if a else 2
            def m(self):
                if self:
                    pass
            class D:
                def n(self):
                    if self:
                        pass
        """
    )
    result = analyze_source("mi.py", code)
    assert result.lloc == 17
    assert result.sloc == 17
    expected = _mi(3 * math.log2(3), complexity=6, lloc=17, comment_percent=100 / 17)
    assert result.maintainability_index == pytest.approx(expected)


def test_maintainability_index_without_operators_is_100() -> None:
    assert analyze_source("mi.py", "def f():\n    return 1\n").maintainability_index == 100.0


# Hostile inputs: the result carries an error instead of raising.


def _assert_failed(result: FileMetrics) -> None:
    assert result.error != ""
    assert result.functions == ()
    assert result.loc == 0
    assert result.maintainability_index == 0.0


def test_syntax_error_names_line() -> None:
    result = analyze_source("bad.py", b"x = 1\ndef f(:\n    pass\n")
    _assert_failed(result)
    assert result.error.startswith("SyntaxError at line 2:")


def test_indentation_error_names_line() -> None:
    result = analyze_source("bad.py", b"def f():\n    x = 1\n  y = 2\n")
    _assert_failed(result)
    assert result.error.startswith("IndentationError at line 3:")


def test_invalid_utf8_names_line() -> None:
    result = analyze_source("bad.py", b"x = 1\ny = '\xff'\n")
    _assert_failed(result)
    assert "invalid utf-8 at line 2" in result.error


def test_invalid_utf8_on_first_line() -> None:
    result = analyze_source("bad.py", b"\xfe = 1\n")
    _assert_failed(result)
    assert "invalid utf-8 at line 1" in result.error


def test_unknown_encoding_cookie() -> None:
    result = analyze_source("bad.py", b"# coding: no-such-codec\nx = 1\n")
    _assert_failed(result)
    assert "no-such-codec" in result.error


def test_coding_cookie_selects_encoding() -> None:
    result = analyze_source("latin.py", b"# -*- coding: latin-1 -*-\nx = '\xff' + y\n")
    assert result.error == ""
    assert result.loc == 2


def test_byte_order_mark_is_skipped() -> None:
    result = analyze_source("bom.py", b"\xef\xbb\xbfx = a + b\n")
    assert result.error == ""
    assert result.loc == 1
    assert result.sloc == 1


def test_unpaired_surrogate_names_line() -> None:
    result = analyze_source("surrogate.py", "x = 1\r\ny = '\udcff'\n")
    _assert_failed(result)
    assert result.error == "invalid source: unpaired surrogate '\\udcff' at line 2"


def test_nul_byte_names_line() -> None:
    result = analyze_source("nul.py", b"x = 1\ny = 2\x00\n")
    _assert_failed(result)
    assert result.error == "invalid source: NUL byte at line 2"


def test_deeply_nested_expression_is_analyzed() -> None:
    # 1000 unary minus operators: a tree 1000 nodes deep that the parser accepts.
    result = analyze_source("deep.py", "x = " + "-" * 1000 + "1\n")
    assert result.error == ""
    # 1000 USub operators with one operand each. The operands are 999 distinct
    # nodes and the constant 1.
    assert result.halstead_volume == pytest.approx(2000 * math.log2(1001))


def test_expression_nested_beyond_parser_limit() -> None:
    parenthesized = analyze_source("deep.py", "x = " + "(" * 1000 + "1" + ")" * 1000 + "\n")
    _assert_failed(parenthesized)
    assert "line 1" in parenthesized.error
    long_sum = analyze_source("deep.py", "x = " + "+".join(["1"] * 100_000) + "\n")
    _assert_failed(long_sum)
    assert "nested too deeply" in long_sum.error


def test_blocks_nested_1000_levels() -> None:
    lines = ["def f(x):"]
    lines += [" " * (level + 1) + "if x:" for level in range(1000)]
    lines.append(" " * 1001 + "pass")
    result = analyze_source("deep.py", "\n".join(lines) + "\n")
    _assert_failed(result)
    assert result.error.startswith("IndentationError at line ")
    assert "indentation" in result.error


def test_empty_file() -> None:
    result = analyze_source("empty.py", b"")
    assert result == FileMetrics(
        path="empty.py",
        loc=0,
        lloc=0,
        sloc=0,
        comments=0,
        multi=0,
        blank=0,
        single_comments=0,
        maintainability_index=100.0,
        halstead_volume=0.0,
        functions=(),
        error="",
    )


def test_large_generated_file_completes() -> None:
    block = textwrap.dedent(
        """\
        def handler_{n}(request, retries=3):
            # Route one request.
            if request.method == "GET" and request.path:
                for attempt in range(retries):
                    try:
                        return fetch(request, attempt)
                    except TimeoutError:
                        continue
            elif request.method in ("POST", "PUT"):
                return [item for item in request.items if item.valid]
            return None

        TABLE_{n} = {{
            "name": "handler_{n}",
            "limit": {n} * 2 + 1,
        }}

        """
    )
    source = "".join(block.format(n=n) for n in range(18_000)).encode()
    assert len(source) > 5_000_000
    started = time.perf_counter()
    result = analyze_source("big.py", source)
    elapsed = time.perf_counter() - started
    assert result.error == ""
    assert len(result.functions) == 18_000
    assert result.loc == 17 * 18_000
    # if, and, for, except, elif, and the comprehension's for and if
    assert {f.cyclomatic_complexity for f in result.functions} == {8}
    # About 10 times the 12 s measured on the 2-core development machine.
    assert elapsed < 120


# Properties of generated programs.

_CONDITIONS = st.sampled_from(
    ["a", "not b", "a and b", "a or b and c", "a < b <= c", "x if a else y", "any(v for v in a if v)"]
)
_SIMPLE = st.sampled_from(
    [
        ["pass"],
        ["x = a + b * 2"],
        ["# a comment"],
        [""],
        ["values = [v for v in a if v]"],
        ['"""Docstring', "", 'with lines."""'],
        ["'''One line.'''"],
        ["total = (a and b) or not c  # trailing"],
        ["call(a,", "     b)"],
        ["s = 'text'; t = 2"],
        ["assert a or b, 'message'"],
        ["f = lambda v: v if v else a"],
        ["x += 1"],
        ["return a"],
        ["text = '''first", "", "second'''"],
        ["y = \\", "    1"],
    ]
)


@st.composite
def _block(draw: st.DrawFn, children: st.SearchStrategy[list[str]]) -> list[str]:
    kind = draw(st.sampled_from(["if", "for", "while", "try", "with", "def", "class", "match"]))
    condition = draw(_CONDITIONS)
    bodies = draw(st.lists(st.lists(children, min_size=1, max_size=3), min_size=3, max_size=3))
    headers = {
        "if": [f"if {condition}:", f"elif {condition}:", "else:"],
        "for": ["for v in a:", "else:"],
        "while": [f"while {condition}:"],
        "try": ["try:", "except ValueError:", "else:", "finally:"],
        "with": ["with open(a) as handle:"],
        "def": ["def fn(a, b=1):"],
        "class": ["class Thing(Base):"],
        "match": ["match a:"],
    }[kind]
    clause_count = draw(st.integers(min_value=2 if kind == "try" else 1, max_value=len(headers)))
    lines: list[str] = []
    for header, body in zip(headers[:clause_count], bodies, strict=False):
        lines.append(header)
        if kind == "match":
            for pattern, case_body in zip(["1 | 2", "[x, *rest] if x", "_"], bodies, strict=True):
                lines.append(f"    case {pattern}:")
                lines.extend(_indent(case_body, 8))
        else:
            lines.extend(_indent(body, 4))
    return lines


def _indent(body: list[list[str]], width: int) -> list[str]:
    lines = [line for statement in body for line in statement]
    lines.append("pass")  # a body of only comments and blank lines is invalid
    return [" " * width + line if line else line for line in lines]


_STATEMENT = st.recursive(_SIMPLE, _block, max_leaves=25)
_PROGRAMS = st.lists(_STATEMENT, min_size=0, max_size=8).map(
    lambda statements: "".join(line + "\n" for statement in statements for line in statement)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PROGRAMS)
def test_properties_of_generated_programs(code: str) -> None:
    result = analyze_source("generated.py", code)
    assert result.error == ""
    assert result.loc == code.count("\n")
    assert result.sloc <= result.loc
    assert result.sloc + result.blank + result.multi + result.single_comments == result.loc
    assert 0.0 <= result.maintainability_index <= 100.0
    assert result.halstead_volume >= 0.0
    assert len(result.functions) == code.count("def fn(")
    for function in result.functions:
        assert function.cyclomatic_complexity >= 1
        assert function.line_end >= function.line_start
        assert function.length == function.line_end - function.line_start + 1
        assert function.max_nesting >= 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(source: bytes) -> None:
    result = analyze_source("fuzz.py", source)
    if result.error:
        assert result.functions == ()
    else:
        assert result.sloc <= result.loc


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PROGRAMS)
def test_generated_programs_match_radon(code: str) -> None:
    result = analyze_source("generated.py", code)
    assert result.error == ""
    expected_raw = radon.raw.analyze(code)
    for metric in expected_raw._fields:
        assert getattr(result, metric) == getattr(expected_raw, metric), metric
    expected_mi = radon.metrics.mi_visit(code, multi=True)
    assert result.maintainability_index == pytest.approx(expected_mi, abs=0.01)
    expected_volume = radon.metrics.h_visit(code).total.volume
    assert result.halstead_volume == pytest.approx(expected_volume, abs=0.01)
    listed = {(f.line_start, f.name): f for f in result.functions}
    blocks = radon.complexity.add_inner_blocks(radon.complexity.cc_visit(code))
    for block in blocks:
        if not isinstance(block, radon.visitors.Function):
            continue
        function = listed[(block.lineno, block.name.rsplit(".", 1)[-1])]
        assert function.cyclomatic_complexity == block.complexity
        assert function.line_end == block.endline
        assert function.is_method == block.is_method


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(source: str) -> None:
    result = analyze_source("fuzz.py", source)
    if result.error:
        assert result.functions == ()
    else:
        assert result.sloc <= result.loc
