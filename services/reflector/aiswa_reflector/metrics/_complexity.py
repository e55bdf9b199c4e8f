from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

# Statements that open a nested block for FunctionMetrics.max_nesting.
BLOCK_STATEMENTS: frozenset[type[ast.AST]] = frozenset(
    {
        ast.If,
        ast.For,
        ast.AsyncFor,
        ast.While,
        ast.With,
        ast.AsyncWith,
        ast.Try,
        ast.TryStar,
        ast.Match,
    }
)


def _handlers_and_else(node: ast.Try | ast.TryStar) -> int:
    return len(node.handlers) + bool(node.orelse)


def _extra_operands(node: ast.BoolOp) -> int:
    return len(node.values) - 1


def _one(node: ast.AST) -> int:
    return 1


def _loop(node: ast.For | ast.AsyncFor | ast.While) -> int:
    return 1 + bool(node.orelse)


def _comprehension(node: ast.comprehension) -> int:
    return 1 + len(node.ifs)


def _match(node: ast.Match) -> int:
    # radon subtracts one case when any case is a bare capture or wildcard
    # (``case _:``, ``case x:``), with or without a guard.
    catch_all = any(
        isinstance(case.pattern, ast.MatchAs) and case.pattern.pattern is None
        for case in node.cases
    )
    return max(0, len(node.cases) - catch_all)


# Decision points per node type, as radon.visitors.ComplexityVisitor (radon 6.0.1)
# counts them, plus ``try``/``except*``, which radon does not count. ``assert``
# counts 1 but the tree walker handles it, because radon does not look inside it.
# ``with``, lambdas and ``case`` guards count nothing.
DECISION_POINTS: dict[type[ast.AST], Callable[[Any], int]] = {
    ast.Try: _handlers_and_else,
    ast.TryStar: _handlers_and_else,
    ast.BoolOp: _extra_operands,
    ast.If: _one,
    ast.IfExp: _one,
    ast.Match: _match,
    ast.For: _loop,
    ast.AsyncFor: _loop,
    ast.While: _loop,
    ast.comprehension: _comprehension,
}


def elif_branch(node: ast.If) -> ast.If | None:
    """Return the ``If`` node of the ``elif`` that continues ``node``, if there is one.

    The AST stores ``elif b:`` as an ``If`` alone in the ``orelse`` of the previous
    ``If``, like ``else:`` followed by an indented ``if b:``. Only the ``elif`` starts
    at the same column as its ``if``.
    """
    if len(node.orelse) != 1:
        return None
    branch = node.orelse[0]
    if isinstance(branch, ast.If) and branch.col_offset == node.col_offset:
        return branch
    return None
