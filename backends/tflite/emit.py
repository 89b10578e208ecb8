"""Operator-building helpers shared by the TFLite lowerings (``lowering.py``, ``linear.py``)."""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from qexport.backends.tflite.builder import Quant
from qexport.backends.tflite.context import OP, OPT, Ctx
from qexport.ir.graph import Node


def make_options(cls: type, **fields: object) -> object:
    opts = cls()
    for key, value in fields.items():
        setattr(opts, key, value)
    return opts


def reshape_to(
    ctx: Ctx,
    src: int,
    shape: tuple[int, ...],
    name: str,
    quant: Quant | None = None,
    dtype: str | None = None,
) -> int:
    if ctx.b.shape_of(src) == tuple(shape):
        return src
    if ctx.b.has(name):  # e.g. Q, K and V reshape their shared input once
        return ctx.b.index[name]
    out = ctx.b.tensor(name, tuple(shape), dtype or ctx.b.dtype_of(src), quant)
    if quant is None:  # a reshape of integers keeps their scale and zero point
        ctx.b.tensors[out].quantization = ctx.b.tensors[src].quantization
    ctx.b.op(
        OP.RESHAPE,
        [src, ctx.int_vector("shape", list(shape))],
        [out],
        options=make_options(fb.ReshapeOptionsT, newShape=np.asarray(shape, np.int32)),
        options_type=OPT.ReshapeOptions,
    )
    return out


def reshape_into(ctx: Ctx, src: int, node: Node, exact: bool = False) -> None:
    """Reshape ``src`` into the node's output; ``exact``: ``src`` already holds the value with
    its spec applied (integer kernel output), so it is the IR value itself, not ``_float``."""
    value = node.outputs[0]
    out = ctx.b.tensor(value, ctx.shape(value), "float32") if exact else ctx.output(value)
    ctx.b.op(
        OP.RESHAPE,
        [src, ctx.int_vector("shape", list(ctx.shape(node.outputs[0])))],
        [out],
        options=make_options(fb.ReshapeOptionsT, newShape=np.asarray(ctx.shape(node.outputs[0]), np.int32)),
        options_type=OPT.ReshapeOptions,
    )
