"""Symbolic dims at run time: build int64 shape tensors from the graph inputs' shapes."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

import numpy as np

from qexport.errors import QExportError

if TYPE_CHECKING:
    from qexport.backends.onnx.builder import OnnxBuilder

_OPS = {ast.Add: "Add", ast.Sub: "Sub", ast.Mult: "Mul", ast.FloorDiv: "Div"}


def dim_tensor(b: OnnxBuilder, name: str) -> str:
    """1-D int64 tensor [value of dim ``name``], taken from the first input that declares it."""
    key = f"dim.{name}"
    if key in b.cache:
        return b.cache[key]
    for input_name, info in b.graph.inputs.items():
        if name in info.shape:
            index = info.shape.index(name)
            shape = b.node("Shape", [input_name], f"{key}.shape")
            out = b.node("Slice", [shape, b.const(np.array([index])), b.const(np.array([index + 1]))], key)
            b.cache[key] = out
            return out
    raise QExportError(f"symbolic dim {name!r} is not declared by any input")


def expr_tensor(b: OnnxBuilder, expr: int | str) -> str:
    """1-D int64 tensor holding ``expr`` (an int or an expression over dim names)."""
    if isinstance(expr, int):
        return b.const(np.array([expr], np.int64))
    return _walk(b, ast.parse(expr, mode="eval").body)


def _walk(b: OnnxBuilder, node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return b.const(np.array([node.value], np.int64))
    if isinstance(node, ast.Name):
        return dim_tensor(b, node.id)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _walk(b, node.left), _walk(b, node.right)
        return b.node(_OPS[type(node.op)], [left, right], b.fresh("dim.expr"))
    raise QExportError(f"symbolic expression {ast.unparse(node)!r} cannot be lowered to ONNX")


def shape_tensor(b: OnnxBuilder, shape: list[int | str]) -> str:
    """int64 shape tensor: constant when every entry is an int, else Concat of parts."""
    if all(isinstance(d, int) for d in shape):
        return b.const(np.array(shape, np.int64))
    key = f"shape.{shape}"
    if key not in b.cache:  # one Concat per distinct symbolic shape
        b.cache[key] = b.node("Concat", [expr_tensor(b, d) for d in shape], b.fresh("shape"), axis=0)
    return b.cache[key]
