"""Symbolic dimensions: shapes and shape attrs may name dims such as ``batch`` or ``seq``.

A symbolic expression is a string over dim names, integers, ``+ - *`` and ``//`` — e.g.
``"batch*seq"``. It is parsed with ``ast`` and evaluated by a whitelist walker: never ``eval``.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence

from qexport.errors import IRError

Dim = int | str
"""A dimension: a concrete size or a symbolic expression."""

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b,
}


def evaluate(expr: Dim, bindings: Mapping[str, int]) -> int:
    """Value of ``expr`` with dim names bound to sizes."""
    if isinstance(expr, bool):
        raise IRError(f"dimension {expr!r} is a bool, expected an int or expression")
    if isinstance(expr, int):
        return expr
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise IRError(f"bad symbolic dimension {expr!r}: {exc.msg}") from None
    return _walk(tree.body, expr, bindings)


def _walk(node: ast.AST, expr: str, bindings: Mapping[str, int]) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in bindings:
            raise IRError(f"symbolic dimension {expr!r} uses unbound name {node.id!r}")
        return bindings[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_walk(node.operand, expr, bindings)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left = _walk(node.left, expr, bindings)
        right = _walk(node.right, expr, bindings)
        return _BINOPS[type(node.op)](left, right)
    raise IRError(f"symbolic dimension {expr!r} has an unsupported construct")


def names(expr: Dim) -> set[str]:
    """Dim names used by ``expr``."""
    if isinstance(expr, int):
        return set()
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise IRError(f"bad symbolic dimension {expr!r}: {exc.msg}") from None
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def bind(
    declared: Sequence[tuple[str, Sequence[Dim]]], actual: Mapping[str, Sequence[int]]
) -> dict[str, int]:
    """Bind dim names by matching declared input shapes against actual array shapes.

    ``declared`` is ``[(input_name, shape)]``; a plain-name dim binds, an int must match.
    """
    bindings: dict[str, int] = {}
    for name, shape in declared:
        got = tuple(actual[name])
        if len(got) != len(shape):
            raise IRError(f"input {name!r} has rank {len(got)}, the graph expects {len(shape)}")
        for i, (want, size) in enumerate(zip(shape, got, strict=True)):
            if isinstance(want, int):
                if want != size:
                    raise IRError(f"input {name!r} dim {i} is {size}, the graph was captured with {want}")
            elif want.isidentifier():
                prev = bindings.setdefault(want, size)
                if prev != size:
                    raise IRError(f"input {name!r} dim {i} ({want}) is {size} but another input has {prev}")
    return bindings


def resolve(shape: Sequence[Dim], bindings: Mapping[str, int]) -> tuple[int, ...]:
    """Concrete shape for a possibly symbolic one."""
    return tuple(evaluate(d, bindings) for d in shape)
