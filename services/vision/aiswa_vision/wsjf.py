"""Rank a run's findings by WSJF (weighted shortest job first).

Each finding is a file or function whose metric crosses a threshold. Its score
is the cost of delay divided by the job size, each input on a 1 to 10 scale::

    wsjf = (business_value + time_criticality + risk_reduction) / job_size

- business_value: how much code the finding touches, the file's source lines
  relative to the largest file of the run: ``1 + 9 * sloc / max_sloc``.
- time_criticality: how far the metric is past its threshold, as a share of
  the threshold, capped at 1: ``1 + 9 * min(1, excess / threshold)``.
- risk_reduction: how error-prone the code is, from its cyclomatic
  complexity (a function's own, a file's highest): ``1 + 9 * min(1, cc / 50)``.
- job_size: the lines to change, a function's length or a file's source lines:
  ``1 + 9 * min(1, lines / 400)``.

A file that does not parse gets the highest inputs (10, 10, 10, job size 1,
so WSJF 30, the maximum any item can score) and ranks first: no metric
describes it until it parses again.

Ties are broken by path and line, so the same report always gives the same
roadmap. docs/roadmap.md explains the choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Thresholds of radon's ranks: complexity above 10 is rank C or worse, a
# maintainability index below 10 is rank C.
THRESHOLDS = {
    "cyclomatic_complexity": 10.0,
    "max_nesting": 4.0,
    "length": 100.0,
    "maintainability_index": 10.0,
}


@dataclass(frozen=True, slots=True)
class Item:
    target_kind: str  # "file" or "function"
    path: str
    qualified_name: str
    line: int
    problem: str
    metric: str
    value: float
    threshold: float
    business_value: float
    time_criticality: float
    risk_reduction: float
    job_size: float
    wsjf: float


def _scale(fraction: float) -> float:
    return round(1.0 + 9.0 * min(1.0, max(0.0, fraction)), 3)


def _item(kind: str, path: str, name: str, line: int, metric: str, value: float,
          excess: float, cc: float, lines: float, sloc: float, max_sloc: float,
          problem: str) -> Item:
    threshold = THRESHOLDS[metric]
    business_value = _scale(sloc / max_sloc if max_sloc else 0.0)
    time_criticality = _scale(excess / threshold)
    risk_reduction = _scale(cc / 50.0)
    job_size = _scale(lines / 400.0)
    wsjf = round((business_value + time_criticality + risk_reduction) / job_size, 3)
    return Item(kind, path, name, line, problem, metric, float(value), threshold,
                business_value, time_criticality, risk_reduction, job_size, wsjf)


def build_roadmap(files: list[dict[str, Any]]) -> list[Item]:
    """Return every finding of a report, best WSJF first.

    ``files`` are report files as dicts with the reflector's field names, each
    with a ``functions`` list.
    """
    parsed = [f for f in files if not f.get("error")]
    max_sloc = max((f["sloc"] for f in parsed), default=0)
    items: list[Item] = []
    for file in parsed:
        path, sloc = file["path"], file["sloc"]
        functions = file.get("functions", [])
        file_cc = max((fn["cyclomatic_complexity"] for fn in functions), default=1)
        mi = file["maintainability_index"]
        if mi < THRESHOLDS["maintainability_index"]:
            items.append(_item(
                "file", path, "", 1, "maintainability_index", mi,
                THRESHOLDS["maintainability_index"] - mi, file_cc, sloc, sloc, max_sloc,
                f"maintainability index {mi:.1f} is below {THRESHOLDS['maintainability_index']:.0f}"
                " (radon rank C): split the module or simplify its largest functions",
            ))
        for fn in functions:
            cc, nesting, length = fn["cyclomatic_complexity"], fn["max_nesting"], fn["length"]
            name, line = fn["qualified_name"], fn["line_start"]
            if cc > THRESHOLDS["cyclomatic_complexity"]:
                items.append(_item(
                    "function", path, name, line, "cyclomatic_complexity", cc,
                    cc - THRESHOLDS["cyclomatic_complexity"], cc, length, sloc, max_sloc,
                    f"cyclomatic complexity {cc} is above 10: extract branches into "
                    "smaller functions",
                ))
            if nesting > THRESHOLDS["max_nesting"]:
                items.append(_item(
                    "function", path, name, line, "max_nesting", nesting,
                    nesting - THRESHOLDS["max_nesting"], cc, length, sloc, max_sloc,
                    f"blocks nested {nesting} deep (more than 4): return early or "
                    "extract the inner loops",
                ))
            if length > THRESHOLDS["length"]:
                items.append(_item(
                    "function", path, name, line, "length", length,
                    length - THRESHOLDS["length"], cc, length, sloc, max_sloc,
                    f"function is {length} lines long (more than 100): split it by step",
                ))
    for file in files:
        if file.get("error"):
            items.append(Item(
                "file", file["path"], "", 0, f"does not parse: {file['error']}", "parse_error",
                1.0, 0.0, 10.0, 10.0, 10.0, 1.0, 30.0,
            ))
    items.sort(key=lambda item: (-item.wsjf, item.metric != "parse_error", item.path,
                                 item.line, item.metric))
    return items
