"""Code metrics of Python source: raw line counts, cyclomatic complexity, Halstead
volume and maintainability index, computed as radon 6.0.1 computes them.

This pure-Python engine is the reference implementation. docs/metrics.md defines
each metric and lists where it differs from radon.
"""

from __future__ import annotations

from ._analyze import analyze_source
from ._model import FileMetrics, FunctionMetrics

__all__ = ["FileMetrics", "FunctionMetrics", "analyze_source"]
