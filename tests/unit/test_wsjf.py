"""Vision: WSJF inputs, scores and ranking."""

from __future__ import annotations

from aiswa_vision.wsjf import build_roadmap


def _fn(name, cc, nesting=1, length=10, line=1):
    return {"qualified_name": name, "cyclomatic_complexity": cc, "max_nesting": nesting,
            "length": length, "line_start": line}


def _file(path, sloc, functions, mi=50.0, error=""):
    return {"path": path, "sloc": sloc, "maintainability_index": mi, "functions": functions,
            "error": error}


def test_clean_code_has_empty_roadmap():
    assert build_roadmap([_file("a.py", 100, [_fn("f", 3)])]) == []


def test_complex_function_scored_by_formula():
    items = build_roadmap([_file("a.py", 200, [_fn("f", 30, length=40)]),
                           _file("b.py", 400, [])])
    assert len(items) == 1
    item = items[0]
    assert (item.metric, item.value, item.threshold) == ("cyclomatic_complexity", 30.0, 10.0)
    assert item.business_value == 5.5          # 1 + 9 * 200/400
    assert item.time_criticality == 10.0       # excess 20 over threshold 10, capped
    assert item.risk_reduction == 6.4          # 1 + 9 * 30/50
    assert item.job_size == 1.9                # 1 + 9 * 40/400
    assert item.wsjf == round((5.5 + 10.0 + 6.4) / 1.9, 3)
    assert "complexity 30" in item.problem


def test_small_job_ranks_above_large_job_with_same_delay():
    items = build_roadmap([_file("a.py", 100, [
        _fn("big", 20, length=300, line=1), _fn("small", 20, length=20, line=400),
    ])])
    complexity = [i for i in items if i.metric == "cyclomatic_complexity"]
    assert [i.qualified_name for i in complexity] == ["small", "big"]
    assert complexity[0].wsjf > complexity[1].wsjf


def test_every_rule_produces_its_item():
    items = build_roadmap([_file("a.py", 100, [_fn("deep", 5, nesting=6, length=150)], mi=5.0)])
    assert sorted(i.metric for i in items) == ["length", "maintainability_index", "max_nesting"]


def test_unparsable_file_ranks_first():
    items = build_roadmap([
        _file("bad.py", 0, [], error="invalid syntax (line 3)"),
        _file("a.py", 100, [_fn("f", 60, length=5)]),
    ])
    assert items[0].path == "bad.py"
    assert items[0].metric == "parse_error"
    assert "invalid syntax" in items[0].problem


def test_order_is_deterministic():
    files = [_file(f"m{i}.py", 100, [_fn("f", 15, length=20)]) for i in range(5)]
    first = build_roadmap(files)
    assert [i.path for i in first] == sorted(i.path for i in first)
    assert first == build_roadmap(list(reversed(files)))
