from __future__ import annotations

import ast
from typing import NamedTuple

from ._complexity import BLOCK_STATEMENTS, DECISION_POINTS, elif_branch
from ._halstead import HALSTEAD_NODES, HalsteadCounter
from ._model import FunctionMetrics

_MODULE, _CLASS, _FUNCTION = "module", "class", "function"
_FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)


class TreeMetrics(NamedTuple):
    functions: tuple[FunctionMetrics, ...]
    # The file's total complexity as radon.visitors.ComplexityVisitor.total_complexity.
    total_complexity: int
    halstead_volume: float


class _Scope:
    """A module, class or function body, and what the walk counted in it."""

    __slots__ = (
        "kind",
        "name",
        "qualified_name",
        "parent",
        "children",
        "decisions",
        "line_start",
        "column",
        "line_end",
        "max_nesting",
    )

    def __init__(self, kind: str, node: ast.AST | None, parent: _Scope | None) -> None:
        self.kind = kind
        self.name: str = getattr(node, "name", "")
        if parent is None or parent.kind == _MODULE:
            self.qualified_name = self.name
        else:
            self.qualified_name = f"{parent.qualified_name}.{self.name}"
        self.parent = parent
        self.children: list[_Scope] = []
        self.decisions = 0
        self.line_start: int = getattr(node, "lineno", 0)
        self.column: int = getattr(node, "col_offset", 0)
        self.line_end = self.line_start
        self.max_nesting = 0
        if parent is not None:
            parent.children.append(self)

    def function_metrics(self) -> FunctionMetrics:
        assert self.parent is not None
        return FunctionMetrics(
            name=self.name,
            qualified_name=self.qualified_name,
            is_method=self.parent.kind == _CLASS,
            line_start=self.line_start,
            line_end=self.line_end,
            cyclomatic_complexity=1 + self.decisions,
            max_nesting=self.max_nesting,
            length=self.line_end - self.line_start + 1,
        )


# A node to visit, and the state the walk carries down to it:
# - scope: the innermost module, class or function that contains the node.
# - complexity_scope: the scope whose decision points the node adds to, or None
#   inside ``assert`` statements and class headers, where radon counts none.
# - end_scope: the function whose end line the node's line can extend, or None.
#   radon's end line of a function is the largest line number of a node in the
#   function's last statement, leaving out nested functions, classes and asserts.
# - context: the innermost function's name, which radon stores with each
#   Halstead operand.
# - depth: the number of block statements of its function that contain the node.
_Item = tuple[ast.AST, _Scope, _Scope | None, _Scope | None, str | None, int]


def scan_tree(tree: ast.Module) -> TreeMetrics:
    """Compute complexity, nesting, end lines and Halstead counts in one walk of ``tree``.

    The walk uses an explicit stack, not recursion, so any tree that ast.parse
    returns can be scanned. Function headers (decorators, arguments, annotations)
    are skipped, because radon measures neither their complexity nor their
    Halstead operators.
    """
    walk = _Walk(tree)
    while walk.stack:
        item = walk.stack.pop()
        node_type = type(item[0])
        if node_type in _FUNCTION_NODES:
            walk.enter_function(*item)
        elif node_type is ast.ClassDef:
            walk.enter_class(*item)
        elif node_type is ast.Assert:
            walk.visit_assert(*item)
        else:
            walk.visit(*item)
    functions = sorted(walk.functions, key=lambda function: (function.line_start, function.column))
    return TreeMetrics(
        functions=tuple(function.function_metrics() for function in functions),
        total_complexity=_total_complexity(walk.module),
        halstead_volume=walk.halstead.volume,
    )


class _Walk:
    def __init__(self, tree: ast.Module) -> None:
        self.module = _Scope(_MODULE, None, None)
        self.functions: list[_Scope] = []
        self.halstead = HalsteadCounter()
        self.stack: list[_Item] = [(child, self.module, self.module, None, None, 0) for child in tree.body]

    def enter_function(
        self,
        node: ast.AST,
        scope: _Scope,
        complexity_scope: _Scope | None,
        end_scope: _Scope | None,
        context: str | None,
        depth: int,
    ) -> None:
        function = _Scope(_FUNCTION, node, scope)
        self.functions.append(function)
        body = node.body  # type: ignore[attr-defined]
        last = len(body) - 1
        for index, child in enumerate(body):
            end = function if index == last else None
            self.stack.append((child, function, function, end, function.name, 0))

    def enter_class(
        self,
        node: ast.AST,
        scope: _Scope,
        complexity_scope: _Scope | None,
        end_scope: _Scope | None,
        context: str | None,
        depth: int,
    ) -> None:
        class_scope = _Scope(_CLASS, node, scope)
        for field in node._fields:
            value = getattr(node, field, None)
            if field == "body":
                for child in value:
                    self.stack.append((child, class_scope, class_scope, None, context, 0))
            else:
                # Bases, keywords and decorators: radon's Halstead visitor counts
                # them in the enclosing context, and its complexity visitor skips them.
                _push_children(self.stack, value, scope, None, None, context, depth)

    def visit_assert(
        self,
        node: ast.AST,
        scope: _Scope,
        complexity_scope: _Scope | None,
        end_scope: _Scope | None,
        context: str | None,
        depth: int,
    ) -> None:
        if complexity_scope is not None:
            complexity_scope.decisions += 1
        for field in node._fields:
            _push_children(self.stack, getattr(node, field, None), scope, None, None, context, depth)

    def visit(
        self,
        node: ast.AST,
        scope: _Scope,
        complexity_scope: _Scope | None,
        end_scope: _Scope | None,
        context: str | None,
        depth: int,
    ) -> None:
        node_type = type(node)
        if end_scope is not None:
            line = getattr(node, "lineno", 0)
            if line > end_scope.line_end:
                end_scope.line_end = line
        if complexity_scope is not None:
            rule = DECISION_POINTS.get(node_type)
            if rule is not None:
                complexity_scope.decisions += rule(node)
        if node_type in HALSTEAD_NODES:
            self.halstead.add(node, context)

        child_depth = depth
        if node_type in BLOCK_STATEMENTS and scope.kind == _FUNCTION:
            child_depth = depth + 1
            scope.max_nesting = max(scope.max_nesting, child_depth)
        branch = elif_branch(node) if isinstance(node, ast.If) else None
        for field in node._fields:
            value = getattr(node, field, None)
            if branch is not None and field == "orelse":
                # An elif is at the depth of its if, not one block deeper.
                self.stack.append((branch, scope, complexity_scope, end_scope, context, depth))
            else:
                _push_children(self.stack, value, scope, complexity_scope, end_scope, context, child_depth)


def _push_children(
    stack: list[_Item],
    value: object,
    scope: _Scope,
    complexity_scope: _Scope | None,
    end_scope: _Scope | None,
    context: str | None,
    depth: int,
) -> None:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, ast.AST):
                stack.append((item, scope, complexity_scope, end_scope, context, depth))
    elif isinstance(value, ast.AST):
        stack.append((value, scope, complexity_scope, end_scope, context, depth))


def _total_complexity(module: _Scope) -> int:
    """Sum complexity as radon's module-level ComplexityVisitor.total_complexity does.

    It adds the decision points of module-level code, of module-level functions
    and of module-level classes' bodies, plus each method's complexity. The
    decision points of nested functions, of nested classes and of classes inside
    functions are left out.
    """
    total = 1 + module.decisions
    for child in module.children:
        total += child.decisions
        if child.kind == _CLASS:
            total += sum(1 + method.decisions for method in child.children if method.kind == _FUNCTION)
    return total
