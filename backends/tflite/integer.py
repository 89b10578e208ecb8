"""Full-integer graphs (recipe scheme ``integer``) -> LiteRT integer kernels, one per IR op.

Every IR value is one int8 or int16 tensor carrying the value's QuantSpec (docs/integer.md):
no QUANTIZE/DEQUANTIZE pair inside the graph, token ids stay int32, and each op is the integer
kernel of the op's integer form. Only the outputs are DEQUANTIZEd, unless ``--integer-io``.
Op versions follow LiteRT's op_version rules for the tensor types written.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from qexport.backends import registrar
from qexport.backends.tflite.builder import Quant
from qexport.backends.tflite.context import OP, OPT, Ctx, quant_of
from qexport.backends.tflite.emit import make_options, reshape_to
from qexport.errors import LoweringError, QExportError
from qexport.ir.graph import Graph, Node, QDType
from qexport.ir.integer_form import LAYOUT_OPS
from qexport.ir.ops import Op
from qexport.ir.symbols import evaluate
from qexport.reference.kernels import KERNELS

IntegerLowering = Callable[[Ctx, Node], None]
INTEGER_LOWERINGS: dict[Op, IntegerLowering] = {}
lowers = registrar(INTEGER_LOWERINGS)


def _wide(ctx: Ctx, value: str) -> bool:
    return ctx.graph.quant[value].dtype is QDType.INT16


def int_in(ctx: Ctx, value: str) -> int:
    """The integer tensor of ``value``: a graph input (int32 ids), a produced value, or a
    constant stored as its IR integers with its params."""
    if ctx.b.has(value):
        return ctx.b.index[value]
    if value in ctx.folded:  # integer ids computed once (the position-id slice)
        return ctx.constant(value)
    spec = ctx.graph.quant.get(value)
    if value in ctx.graph.constants and spec is not None:
        dtype, params = quant_of(spec)
        return ctx.b.constant(value, ctx.graph.constants[value].astype(dtype), params)
    if value in ctx.graph.constants:
        return ctx.constant(value)
    raise QExportError(f"tflite backend: value {value!r} is used before it is produced")


def int_out(ctx: Ctx, value: str) -> int:
    spec = ctx.graph.quant.get(value)
    if spec is None:
        raise QExportError(f"tflite backend: {value!r} has no integer spec in a full-integer graph")
    dtype, params = quant_of(spec)
    return ctx.b.tensor(value, ctx.shape(value), dtype, params)


def _version(ctx: Ctx, value: str, int8: int, int16: int) -> int:
    return int16 if _wide(ctx, value) else int8


def _constant_rows(ctx: Ctx, node: Node) -> bool:
    """A layout op or a Gather whose inputs are all constant: its integers, computed now."""
    table = node.inputs[0]
    if not all(ctx.is_const(v) or v in ctx.folded for v in node.inputs if v):
        return False
    out = node.outputs[0]
    spec = ctx.graph.quant.get(out)
    if spec is None:
        return False
    integers = ctx.graph.constants.get(table)
    if integers is None or table not in ctx.graph.quant:
        integers = ctx.folded_integers.get(table)
    if integers is None:
        return False
    args = [integers, *(ctx.const_value(v) for v in node.inputs[1:] if v)]
    result = np.asarray(KERNELS[node.op](args, node.attrs, ctx.dims))
    ctx.folded_integers[out] = result
    dtype, params = quant_of(spec)
    ctx.b.constant(out, result.astype(dtype), params)
    return True


# -- embeddings and layout ------------------------------------------------------------------
@lowers(Op.GATHER)
def gather(ctx: Ctx, node: Node) -> None:
    table, ids = node.inputs
    if _constant_rows(ctx, node):
        return
    version = 4 if _wide(ctx, node.outputs[0]) else 2
    ctx.b.op(
        OP.GATHER,
        [int_in(ctx, table), int_in(ctx, ids)],
        [int_out(ctx, node.outputs[0])],
        version=version,
        options=make_options(fb.GatherOptionsT, axis=0, batchDims=0),
        options_type=OPT.GatherOptions,
    )


@lowers(Op.RESHAPE, Op.SQUEEZE, Op.UNSQUEEZE)
def reshape(ctx: Ctx, node: Node) -> None:
    if _constant_rows(ctx, node):
        return
    shape = ctx.shape(node.outputs[0])
    ctx.b.op(
        OP.RESHAPE,
        [int_in(ctx, node.inputs[0]), ctx.int_vector("shape", list(shape))],
        [int_out(ctx, node.outputs[0])],
        options=make_options(fb.ReshapeOptionsT, newShape=np.asarray(shape, np.int32)),
        options_type=OPT.ReshapeOptions,
    )


@lowers(Op.TRANSPOSE)
def transpose(ctx: Ctx, node: Node) -> None:
    if _constant_rows(ctx, node):
        return
    ctx.b.op(
        OP.TRANSPOSE,
        [int_in(ctx, node.inputs[0]), ctx.int_vector("perm", list(node.attrs["perm"]))],
        [int_out(ctx, node.outputs[0])],
        version=_version(ctx, node.outputs[0], 2, 5),
        options=fb.TransposeOptionsT(),
        options_type=OPT.TransposeOptions,
    )


@lowers(Op.SLICE)
def slice_(ctx: Ctx, node: Node) -> None:
    if _constant_rows(ctx, node):
        return
    shape = ctx.shape(node.inputs[0])
    axis = int(node.attrs["axis"]) % len(shape)
    if int(node.attrs["step"]) != 1:
        raise QExportError(f"tflite backend: integer Slice {node.name!r} needs step 1")
    begin = [0] * len(shape)
    size = list(ctx.shape(node.outputs[0]))
    begin[axis] = int(evaluate(node.attrs["start"], ctx.dims))
    ctx.b.op(
        OP.SLICE,
        [int_in(ctx, node.inputs[0]), ctx.int_vector("begin", begin), ctx.int_vector("size", size)],
        [int_out(ctx, node.outputs[0])],
        version=_version(ctx, node.outputs[0], 2, 4),
        options=fb.SliceOptionsT(),
        options_type=OPT.SliceOptions,
    )


@lowers(Op.REQUANTIZE)
def requantize(ctx: Ctx, node: Node) -> None:
    """int8 <-> int16: QUANTIZE of an integer tensor rescales it (no float in between)."""
    ctx.b.op(
        OP.QUANTIZE,
        [int_in(ctx, node.inputs[0])],
        [int_out(ctx, node.outputs[0])],
        version=_version(ctx, node.outputs[0], 1, 2),
    )


# -- arithmetic -----------------------------------------------------------------------------
_BINARY = {
    Op.ADD: (OP.ADD, OPT.AddOptions, fb.AddOptionsT, 2, 3),
    Op.SUB: (OP.SUB, OPT.SubOptions, fb.SubOptionsT, 2, 5),
    Op.MUL: (OP.MUL, OPT.MulOptions, fb.MulOptionsT, 2, 4),
}


@lowers(*_BINARY)
def binary(ctx: Ctx, node: Node) -> None:
    """int16 ADD/SUB take any scales with ``pot_scale_int16`` off (the general kernel)."""
    code, opt_type, opt_cls, v8, v16 = _BINARY[node.op]
    options = opt_cls()
    if node.op is not Op.MUL:
        options.potScaleInt16 = False
    out = node.outputs[0]
    version = _version(ctx, out, v8, v16)
    if node.op is Op.MUL and not _wide(ctx, out):
        a, b = (ctx.graph.quant[v].scale for v in node.inputs)
        version = 3 if float(a) * float(b) / float(ctx.graph.quant[out].scale) >= 1.0 else 2
    ctx.b.op(
        code,
        [int_in(ctx, v) for v in node.inputs],
        [int_out(ctx, out)],
        version=version,
        options=options,
        options_type=opt_type,
    )


_UNARY = {Op.ABS: (OP.ABS, 2, 3), Op.RSQRT: (OP.RSQRT, 2, 3), Op.TANH: (OP.TANH, 2, 3)}


@lowers(*_UNARY)
def unary(ctx: Ctx, node: Node) -> None:
    code, v8, v16 = _UNARY[node.op]
    out = node.outputs[0]
    ctx.b.op(code, [int_in(ctx, node.inputs[0])], [int_out(ctx, out)], version=_version(ctx, out, v8, v16))


@lowers(Op.GELU)
def gelu(ctx: Ctx, node: Node) -> None:
    if _wide(ctx, node.outputs[0]):
        raise QExportError(
            f"tflite backend: GELU {node.name!r} in int16 (the integer form writes it as tanh ops)"
        )
    ctx.b.op(
        OP.GELU,
        [int_in(ctx, node.inputs[0])],
        [int_out(ctx, node.outputs[0])],
        version=2,
        options=make_options(fb.GeluOptionsT, approximate=node.attrs.get("approximate", "none") == "tanh"),
        options_type=OPT.GeluOptions,
    )


@lowers(Op.SOFTMAX)
def softmax(ctx: Ctx, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    if int(node.attrs["axis"]) % rank != rank - 1:
        raise QExportError(f"tflite backend: Softmax {node.name!r} must be over the last axis")
    out = node.outputs[0]
    ctx.b.op(
        OP.SOFTMAX,
        [int_in(ctx, node.inputs[0])],
        [int_out(ctx, out)],
        version=_version(ctx, out, 2, 3),
        options=make_options(fb.SoftmaxOptionsT, beta=1.0),
        options_type=OPT.SoftmaxOptions,
    )


_REDUCERS = {Op.REDUCE_MEAN: OP.MEAN, Op.REDUCE_MAX: OP.REDUCE_MAX}


@lowers(*_REDUCERS)
def reduce(ctx: Ctx, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    out = node.outputs[0]
    ctx.b.op(
        _REDUCERS[node.op],
        [int_in(ctx, node.inputs[0]), ctx.int_vector("axes", [int(a) % rank for a in node.attrs["axes"]])],
        [int_out(ctx, out)],
        version=_version(ctx, out, 2, 3),
        options=make_options(fb.ReducerOptionsT, keepDims=bool(node.attrs["keepdims"])),
        options_type=OPT.ReducerOptions,
    )


@lowers(Op.MATMUL)
def matmul(ctx: Ctx, node: Node) -> None:
    out = node.outputs[0]
    ctx.b.op(
        OP.BATCH_MATMUL,
        [int_in(ctx, v) for v in node.inputs],
        [int_out(ctx, out)],
        version=_version(ctx, out, 2, 3),
        options=make_options(fb.BatchMatMulOptionsT, adjX=False, adjY=False),
        options_type=OPT.BatchMatMulOptions,
    )


@lowers(Op.LINEAR)
def linear(ctx: Ctx, node: Node) -> None:
    """FULLY_CONNECTED on a 2-D view: int8 x int8 -> int8 with an int32 bias, or 16x8 (int16
    activations, int8 weights) with the IR's int32 bias widened to the int64 LiteRT's 16x8
    kernel reads. Per-output-channel weight scales."""
    g = ctx.graph
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    out = node.outputs[0]
    wide = _wide(ctx, x)
    w_spec = g.quant[w]
    rows = int(np.prod(ctx.shape(x)[:-1]))
    n_out, k = g.constants[w].shape
    x2 = reshape_to(ctx, int_in(ctx, x), (rows, k), f"{x}.2d")
    weight = ctx.b.constant(w, g.constants[w], Quant(w_spec.scale, w_spec.zero_point.astype(np.int64), 0))
    inputs = [x2, weight]
    if bias:
        b_spec = g.quant[bias]
        values = g.constants[bias].astype(np.int64 if wide else np.int32)
        inputs.append(ctx.b.constant(bias, values, Quant(b_spec.scale, np.zeros(n_out, np.int64), 0)))
    dtype, params = quant_of(g.quant[out])
    y2 = ctx.b.tensor(f"{out}.2d", (rows, n_out), dtype, params)
    ctx.b.op(
        OP.FULLY_CONNECTED,
        inputs,
        [y2],
        version=1 if wide else 4,
        options=make_options(fb.FullyConnectedOptionsT),
        options_type=OPT.FullyConnectedOptions,
    )
    shape = ctx.shape(out)
    ctx.b.op(
        OP.RESHAPE,
        [y2, ctx.int_vector("shape", list(shape))],
        [int_out(ctx, out)],
        options=make_options(fb.ReshapeOptionsT, newShape=np.asarray(shape, np.int32)),
        options_type=OPT.ReshapeOptions,
    )


def check_integer(graph: Graph) -> None:
    """Every op has an integer kernel here and every float value crosses in integers."""
    for node in graph.nodes:
        if node.op not in INTEGER_LOWERINGS:
            supported = sorted(op.value for op in INTEGER_LOWERINGS)
            raise LoweringError("tflite", node.op.value, node.name, supported, "no full-integer form")
        for value in node.outputs:
            info = graph.values[value]
            if info.dtype == "float32" and value not in graph.quant:
                raise QExportError(
                    f"tflite backend: {node.op.value} node {node.name!r} leaves {value!r} in float; "
                    "a full-integer file needs a spec on every value"
                )


def build_outputs(ctx: Ctx, integer_io: bool) -> dict[str, str]:
    """Public output name -> tensor name: the integer tensors, or their DEQUANTIZEd floats."""
    outputs = {}
    for public, value in ctx.graph.outputs.items():
        tensor = int_in(ctx, value)
        if not integer_io:
            floats = ctx.b.tensor(f"{value}.float", ctx.shape(value), "float32")
            ctx.b.op(OP.DEQUANTIZE, [tensor], [floats], version=_version(ctx, value, 2, 3))
            tensor = floats
        outputs[public] = ctx.b.tensors[tensor].name
    return outputs


assert LAYOUT_OPS <= set(INTEGER_LOWERINGS)
