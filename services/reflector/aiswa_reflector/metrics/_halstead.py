from __future__ import annotations

import ast
import math
from collections.abc import Hashable, Sequence

# The only nodes that radon.visitors.HalsteadVisitor (radon 6.0.1) counts.
HALSTEAD_NODES: frozenset[type[ast.AST]] = frozenset(
    {ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.AugAssign, ast.Compare}
)


class HalsteadCounter:
    """Operator and operand counts of one file, with radon's rules for distinctness.

    An operator is distinct by its AST class name, so ``a + b`` and ``a += b`` share
    ``Add``. An operand is distinct by the innermost enclosing function's name
    (None outside functions) together with its identifier, attribute name or
    constant value. ``x``, ``self.x`` and ``"x"`` are therefore one operand, and so
    are ``1``, ``1.0`` and ``True``, because they are equal in Python. Any other
    operand, such as a call or a subscript, is distinct from every other.
    """

    __slots__ = ("operators", "operands", "_operator_names", "_operand_keys")

    def __init__(self) -> None:
        self.operators = 0
        self.operands = 0
        self._operator_names: set[str] = set()
        self._operand_keys: set[tuple[str | None, Hashable]] = set()

    def add(self, node: ast.AST, context: str | None) -> None:
        """Count the operators and operands of one node of a type in HALSTEAD_NODES."""
        if isinstance(node, ast.BinOp):
            self._add(1, (type(node.op).__name__,), (node.left, node.right), context)
        elif isinstance(node, ast.UnaryOp):
            self._add(1, (type(node.op).__name__,), (node.operand,), context)
        elif isinstance(node, ast.BoolOp):
            self._add(1, (type(node.op).__name__,), node.values, context)
        elif isinstance(node, ast.AugAssign):
            self._add(1, (type(node.op).__name__,), (node.target, node.value), context)
        elif isinstance(node, ast.Compare):
            names = tuple(type(op).__name__ for op in node.ops)
            self._add(len(names), names, (*node.comparators, node.left), context)

    def _add(
        self,
        operators: int,
        names: Sequence[str],
        operands: Sequence[ast.expr],
        context: str | None,
    ) -> None:
        self.operators += operators
        self.operands += len(operands)
        self._operator_names.update(names)
        for operand in operands:
            self._operand_keys.add((context, _operand_key(operand)))

    @property
    def volume(self) -> float:
        """Halstead volume: (N1 + N2) * log2(n1 + n2), or 0 with no operators or operands."""
        vocabulary = len(self._operator_names) + len(self._operand_keys)
        if vocabulary == 0:
            return 0.0
        # math.log(x, 2), not math.log2, to round exactly as radon does.
        return (self.operators + self.operands) * math.log(vocabulary, 2)


def _operand_key(node: ast.expr) -> Hashable:
    node_type = type(node)
    if node_type is ast.Name:
        return node.id  # type: ignore[attr-defined]
    if node_type is ast.Attribute:
        return node.attr  # type: ignore[attr-defined]
    if node_type is ast.Constant:
        return node.value  # type: ignore[attr-defined]
    return node
