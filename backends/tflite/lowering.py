"""One small function per IR op: emit LiteRT built-in operators for one node.

Each function receives the context and the node, reads its inputs with ``ctx.float_in`` (or
``ctx.quantized`` for integer kernels) and writes ``ctx.output(value)``. Op versions follow
LiteRT's op_version rules for the tensor types used (float ops are version 1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from qexport.backends import registrar
from qexport.backends.tflite.builder import Quant
from qexport.backends.tflite.context import OP, OPT, Ctx, to_storage
from qexport.backends.tflite.emit import make_options, reshape_into, reshape_to
from qexport.backends.tflite.linear import lower_linear
from qexport.errors import QExportError
from qexport.ir.graph import Node, QuantSpec
from qexport.ir.ops import Op
from qexport.ir.symbols import evaluate

Lowering = Callable[[Ctx, Node], None]
LOWERINGS: dict[Op, Lowering] = {}


lowers = registrar(LOWERINGS)

# Linear: the integer kernels, in linear.py
lowers(Op.LINEAR)(lower_linear)


# -- Gather: embeddings ---------------------------------------------------------------------
@lowers(Op.GATHER)
def gather(ctx: Ctx, node: Node) -> None:
    """Quantized tables (int8, one scale per row) keep the IR's integers and row scales in the
    file and dequantize only what is read (docs/backend-tflite.md, "Embedding tables"); float
    tables: GATHER."""
    table, ids = node.inputs
    spec = ctx.graph.quant.get(table)
    if spec is not None and spec.axis == 0 and not np.any(spec.zero_point):
        if ctx.is_const(ids):
            _constant_rows(ctx, node, spec)
        else:
            _quantized_rows(ctx, node, spec)
        return
    ctx.b.op(
        OP.GATHER,
        [ctx.float_in(table), ctx.float_in(ids)],
        [ctx.output(node.outputs[0])],
        options=make_options(fb.GatherOptionsT, axis=0, batchDims=0),
        options_type=OPT.GatherOptions,
    )


def _quantized_rows(ctx: Ctx, node: Node, spec: QuantSpec) -> None:
    """Rows of an int8 per-row table picked at run time (word and token-type embeddings).

    The table tensor carries the IR's integers and row scales for readers; the ops read the
    same buffer through views:
    - a table no larger than one lookup's output (token types: 2 rows) is DEQUANTIZEd whole,
      once at load (a constant input), and GATHERed as floats;
    - a large one (words: 30 522 rows) GATHERs the int8 rows (read with scale 1), DEQUANTIZEs
      them to integer-valued floats and MULs each by its row's scale, GATHERed from a float
      copy of the scales: 27 against 73 µs for EMBEDDING_LOOKUP, which did the same product
      in a scalar loop (128 ids, 384 wide, measured).
    Either way each value is ``q · s`` rounded once to float32, as the IR dequantizes.
    """
    table, ids = node.inputs
    rows = ctx.graph.constants[table]
    n, width = int(np.prod(ctx.shape(ids))), int(np.prod(rows.shape[1:]))
    stored = ctx.b.constant(
        table, to_storage(rows, spec), Quant(spec.scale, np.zeros_like(spec.zero_point, np.int64), 0)
    )
    flat = reshape_to(ctx, ctx.float_in(ids), (n,), f"{ids}.flat")
    by_rows = make_options(fb.GatherOptionsT, axis=0, batchDims=0)
    y = ctx.b.tensor(f"{node.outputs[0]}.flat", (n, width), "float32")
    if rows.shape[0] <= n:
        floats = ctx.b.tensor(f"{table}_float", rows.shape, "float32")
        ctx.b.op(OP.DEQUANTIZE, [stored], [floats], version=5)  # constant: done once at load
        floats = reshape_to(ctx, floats, (rows.shape[0], width), f"{table}_float.2d")
        ctx.b.op(OP.GATHER, [floats, flat], [y], options=by_rows, options_type=OPT.GatherOptions)
    else:
        integers = ctx.b.integer_view(f"{table}_integers", stored, (rows.shape[0], width))
        picked = ctx.b.tensor(f"{node.outputs[0]}.integers", (n, width), "int8")
        ctx.b.tensors[picked].quantization = ctx.b.tensors[integers].quantization
        ctx.b.op(
            OP.GATHER, [integers, flat], [picked], version=2, options=by_rows, options_type=OPT.GatherOptions
        )
        steps = ctx.b.tensor(f"{node.outputs[0]}.steps", (n, width), "float32")
        ctx.b.op(OP.DEQUANTIZE, [picked], [steps], version=2)
        scales = ctx.b.constant(f"{table}_row_scale", np.asarray(spec.scale, np.float32).reshape(-1, 1))
        row_scale = ctx.b.tensor(f"{node.outputs[0]}.row_scale", (n, 1), "float32")
        ctx.b.op(OP.GATHER, [scales, flat], [row_scale], options=by_rows, options_type=OPT.GatherOptions)
        ctx.b.op(
            OP.MUL, [steps, row_scale], [y], options=make_options(fb.MulOptionsT), options_type=OPT.MulOptions
        )
    reshape_into(ctx, y, node)


def _constant_rows(ctx: Ctx, node: Node, spec: QuantSpec) -> None:
    """A quantized table read at constant positions (BERT's position embeddings at a fixed
    ``--seq-len``): the picked rows are stored as the IR's integers with their own row scales
    and DEQUANTIZEd — a constant input, so the interpreter does it once at load instead of an
    EMBEDDING_LOOKUP on every run (2 % of the dynamic MiniLM file's latency, measured)."""
    table, ids = node.inputs
    picked = np.asarray(ctx.const_value(ids)).astype(np.int64)
    rows = ctx.graph.constants[table][picked]  # ids shape + row shape
    scales = spec.scale[picked.reshape(-1)]
    axis = picked.ndim - 1  # the last id axis enumerates the picked rows
    if picked.ndim == 0 or any(d != 1 for d in picked.shape[:-1]):
        raise QExportError(f"tflite backend: constant gather {node.name!r} needs ids of shape [1, ..., n]")
    q = ctx.b.constant(
        f"{node.outputs[0]}_quantized",
        to_storage(rows, spec),
        Quant(scales, np.zeros(len(scales), np.int64), axis),
    )
    ctx.b.op(OP.DEQUANTIZE, [q], [ctx.output(node.outputs[0])], version=5)


# -- elementwise ----------------------------------------------------------------------------
_BINARY = {
    Op.ADD: (OP.ADD, OPT.AddOptions, fb.AddOptionsT),
    Op.SUB: (OP.SUB, OPT.SubOptions, fb.SubOptionsT),
    Op.MUL: (OP.MUL, OPT.MulOptions, fb.MulOptionsT),
    Op.DIV: (OP.DIV, OPT.DivOptions, fb.DivOptionsT),
    Op.POW: (OP.POW, OPT.PowOptions, fb.PowOptionsT),
    Op.EQUAL: (OP.EQUAL, OPT.EqualOptions, fb.EqualOptionsT),
    Op.NOT_EQUAL: (OP.NOT_EQUAL, OPT.NotEqualOptions, fb.NotEqualOptionsT),
}


@lowers(*_BINARY)
def binary(ctx: Ctx, node: Node) -> None:
    code, opt_type, opt_cls = _BINARY[node.op]
    a, b = (ctx.float_in(v) for v in node.inputs)
    ctx.b.op(code, [a, b], [ctx.output(node.outputs[0])], options=opt_cls(), options_type=opt_type)


_UNARY = {
    Op.TANH: OP.TANH,
    Op.RELU: OP.RELU,
    Op.SQRT: OP.SQRT,
    Op.RSQRT: OP.RSQRT,
    Op.EXP: OP.EXP,
    Op.NEG: OP.NEG,
    Op.ABS: OP.ABS,
}


@lowers(*_UNARY)
def unary(ctx: Ctx, node: Node) -> None:
    ctx.b.op(_UNARY[node.op], [ctx.float_in(node.inputs[0])], [ctx.output(node.outputs[0])])


@lowers(Op.GELU)
def gelu(ctx: Ctx, node: Node) -> None:
    approximate = node.attrs.get("approximate", "none") == "tanh"
    ctx.b.op(
        OP.GELU,
        [ctx.float_in(node.inputs[0])],
        [ctx.output(node.outputs[0])],
        options=make_options(fb.GeluOptionsT, approximate=approximate),
        options_type=OPT.GeluOptions,
    )


@lowers(Op.SOFTMAX)
def softmax(ctx: Ctx, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    if int(node.attrs["axis"]) % rank != rank - 1:
        raise QExportError(f"tflite backend: Softmax {node.name!r} is not over the last axis")
    ctx.b.op(
        OP.SOFTMAX,
        [ctx.float_in(node.inputs[0])],
        [ctx.output(node.outputs[0])],
        options=make_options(fb.SoftmaxOptionsT, beta=1.0),
        options_type=OPT.SoftmaxOptions,
    )


@lowers(Op.LAYER_NORM)
def layer_norm(ctx: Ctx, node: Node) -> None:
    """Decomposed in float: mean, centre, mean of squares, rsqrt(var + eps), scale, shift."""
    x = ctx.float_in(node.inputs[0])
    rank = len(ctx.shape(node.inputs[0]))
    axes = ctx.int_vector("layer_norm.axes", list(range(rank - int(node.attrs["num_axes"]), rank)))
    name, shape = node.outputs[0], ctx.shape(node.inputs[0])
    stat_shape = shape[: rank - int(node.attrs["num_axes"])] + (1,) * int(node.attrs["num_axes"])
    mean_opts = make_options(fb.ReducerOptionsT, keepDims=True)
    mean = ctx.b.tensor(f"{name}.mean", stat_shape, "float32")
    ctx.b.op(OP.MEAN, [x, axes], [mean], options=mean_opts, options_type=OPT.ReducerOptions)
    centered = ctx.b.tensor(f"{name}.centered", shape, "float32")
    ctx.b.op(OP.SUB, [x, mean], [centered], options=fb.SubOptionsT(), options_type=OPT.SubOptions)
    square = ctx.b.tensor(f"{name}.square", shape, "float32")
    ctx.b.op(OP.MUL, [centered, centered], [square], options=fb.MulOptionsT(), options_type=OPT.MulOptions)
    var = ctx.b.tensor(f"{name}.var", stat_shape, "float32")
    ctx.b.op(OP.MEAN, [square, axes], [var], options=mean_opts, options_type=OPT.ReducerOptions)
    eps = ctx.b.scalar(f"{name}.eps", np.float32(node.attrs["eps"]))
    var_eps = ctx.b.tensor(f"{name}.var_eps", stat_shape, "float32")
    ctx.b.op(OP.ADD, [var, eps], [var_eps], options=fb.AddOptionsT(), options_type=OPT.AddOptions)
    inv = ctx.b.tensor(f"{name}.rstd", stat_shape, "float32")
    ctx.b.op(OP.RSQRT, [var_eps], [inv])
    w_name = node.inputs[1] if len(node.inputs) > 1 else ""
    b_name = node.inputs[2] if len(node.inputs) > 2 else ""
    y = ctx.output(name) if not (w_name or b_name) else ctx.b.tensor(f"{name}.normalized", shape, "float32")
    ctx.b.op(OP.MUL, [centered, inv], [y], options=fb.MulOptionsT(), options_type=OPT.MulOptions)
    if w_name:
        scaled = ctx.output(name) if not b_name else ctx.b.tensor(f"{name}.scaled", shape, "float32")
        ctx.b.op(
            OP.MUL, [y, ctx.float_in(w_name)], [scaled], options=fb.MulOptionsT(), options_type=OPT.MulOptions
        )
        y = scaled
    if b_name:
        ctx.b.op(
            OP.ADD,
            [y, ctx.float_in(b_name)],
            [ctx.output(name)],
            options=fb.AddOptionsT(),
            options_type=OPT.AddOptions,
        )


def _transposed_rhs(ctx: Ctx, node: Node) -> bool:
    """True for a Transpose of the last two axes whose only reader is a MatMul's right operand
    (attention's K^T): BATCH_MATMUL reads it with ``adj_y`` instead of a materialized copy."""
    perm = list(node.attrs.get("perm", ())) if node.op is Op.TRANSPOSE else []
    rank = len(perm)
    swaps_last_two = rank >= 2 and perm == [*range(rank - 2), rank - 1, rank - 2]
    readers = ctx.consumers.get(node.outputs[0], [])
    return (
        swaps_last_two
        and node.outputs[0] not in ctx.graph.quant
        and node.outputs[0] not in ctx.graph.outputs.values()
        and len(readers) == 1
        and readers[0].op is Op.MATMUL
        and readers[0].inputs[1] == node.outputs[0]
        and readers[0].inputs[0] != node.outputs[0]
    )


@lowers(Op.MATMUL)
def matmul(ctx: Ctx, node: Node) -> None:
    producer = ctx.producers.get(node.inputs[1])
    adj_y = producer is not None and _transposed_rhs(ctx, producer)
    rhs = producer.inputs[0] if adj_y else node.inputs[1]
    ctx.b.op(
        OP.BATCH_MATMUL,
        [ctx.float_in(node.inputs[0]), ctx.float_in(rhs)],
        [ctx.output(node.outputs[0])],
        options=make_options(fb.BatchMatMulOptionsT, adjX=False, adjY=adj_y),
        options_type=OPT.BatchMatMulOptions,
    )


# -- shapes ---------------------------------------------------------------------------------
@lowers(Op.RESHAPE, Op.SQUEEZE, Op.UNSQUEEZE, Op.REQUANTIZE)
def reshape(ctx: Ctx, node: Node) -> None:
    reshape_into(ctx, ctx.float_in(node.inputs[0]), node)


@lowers(Op.TRANSPOSE)
def transpose(ctx: Ctx, node: Node) -> None:
    if _transposed_rhs(ctx, node):
        return  # the MatMul reading it transposes on the fly (adj_y)
    perm = ctx.int_vector("perm", list(node.attrs["perm"]))
    ctx.b.op(
        OP.TRANSPOSE,
        [ctx.float_in(node.inputs[0]), perm],
        [ctx.output(node.outputs[0])],
        options=fb.TransposeOptionsT(),
        options_type=OPT.TransposeOptions,
    )


@lowers(Op.SLICE)
def slice_(ctx: Ctx, node: Node) -> None:
    shape = ctx.shape(node.inputs[0])
    axis = int(node.attrs["axis"]) % len(shape)
    begin, end, step = [0] * len(shape), list(shape), [1] * len(shape)
    begin[axis], end[axis], _ = slice(
        evaluate(node.attrs["start"], ctx.dims), evaluate(node.attrs["end"], ctx.dims)
    ).indices(shape[axis])  # Python slicing: negative bounds count from the end, then clamp
    step[axis] = int(node.attrs["step"])
    if step[axis] == 1:
        # plain SLICE (begin, size) for unit steps, as LiteRT's own converter writes it
        size = [max(e - b, 0) for b, e in zip(begin, end, strict=True)]
        ctx.b.op(
            OP.SLICE,
            [ctx.float_in(node.inputs[0]), ctx.int_vector("begin", begin), ctx.int_vector("size", size)],
            [ctx.output(node.outputs[0])],
            options=fb.SliceOptionsT(),
            options_type=OPT.SliceOptions,
        )
        return
    ctx.b.op(
        OP.STRIDED_SLICE,
        [
            ctx.float_in(node.inputs[0]),
            ctx.int_vector("begin", begin),
            ctx.int_vector("end", end),
            ctx.int_vector("strides", step),
        ],
        [ctx.output(node.outputs[0])],
        options=fb.StridedSliceOptionsT(),
        options_type=OPT.StridedSliceOptions,
    )


@lowers(Op.CONCAT)
def concat(ctx: Ctx, node: Node) -> None:
    rank = len(ctx.shape(node.outputs[0]))
    ctx.b.op(
        OP.CONCATENATION,
        [ctx.float_in(v) for v in node.inputs if v],
        [ctx.output(node.outputs[0])],
        options=make_options(fb.ConcatenationOptionsT, axis=int(node.attrs["axis"]) % rank),
        options_type=OPT.ConcatenationOptions,
    )


@lowers(Op.EXPAND)
def expand(ctx: Ctx, node: Node) -> None:
    shape = ctx.int_vector("shape", list(ctx.shape(node.outputs[0])))
    # version 2: BROADCAST_TO's version 1 was withdrawn (op_version.cc) and LiteRT registers none
    ctx.b.op(OP.BROADCAST_TO, [ctx.float_in(node.inputs[0]), shape], [ctx.output(node.outputs[0])], version=2)


@lowers(Op.WHERE)
def where(ctx: Ctx, node: Node) -> None:
    ctx.b.op(OP.SELECT_V2, [ctx.float_in(v) for v in node.inputs], [ctx.output(node.outputs[0])])


@lowers(Op.CAST)
def cast(ctx: Ctx, node: Node) -> None:
    ctx.b.op(OP.CAST, [ctx.float_in(node.inputs[0])], [ctx.output(node.outputs[0])])


_REDUCERS = {Op.REDUCE_MEAN: OP.MEAN, Op.REDUCE_SUM: OP.SUM, Op.REDUCE_MAX: OP.REDUCE_MAX}


@lowers(*_REDUCERS)
def reduce(ctx: Ctx, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    axes = ctx.int_vector("axes", [int(a) % rank for a in node.attrs["axes"]])
    ctx.b.op(
        _REDUCERS[node.op],
        [ctx.float_in(node.inputs[0]), axes],
        [ctx.output(node.outputs[0])],
        options=make_options(fb.ReducerOptionsT, keepDims=bool(node.attrs["keepdims"])),
        options_type=OPT.ReducerOptions,
    )


@lowers(Op.CUMSUM)
def cumsum(ctx: Ctx, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    axis = ctx.b.scalar("cumsum.axis", np.int32(int(node.attrs["axis"]) % rank), "int32")
    ctx.b.op(
        OP.CUMSUM,
        [ctx.float_in(node.inputs[0]), axis],
        [ctx.output(node.outputs[0])],
        options=fb.CumsumOptionsT(),
        options_type=OPT.CumsumOptions,
    )


@lowers(Op.PAD)
def pad(ctx: Ctx, node: Node) -> None:
    pads = np.asarray(node.attrs["pads"], np.int32)
    info = ctx.graph.values[node.outputs[0]]
    value = ctx.b.scalar(
        "pad.value", np.asarray(node.attrs["value"], np.float32 if info.dtype == "float32" else np.int32)
    )
    ctx.b.op(
        OP.PADV2,
        [ctx.float_in(node.inputs[0]), ctx.b.scalar("pads", pads, "int32"), value],
        [ctx.output(node.outputs[0])],
        options=fb.PadV2OptionsT(),
        options_type=OPT.PadV2Options,
    )


# Ops with no lowering, on purpose (``check`` names them before anything is written): TFLite has
# no built-in ERF (BERT's erf appears inside GELU, which lowers to the GELU op); ATTENTION is made
# only by the fusion pass the ONNX backend runs, and LiteRT gets attention's ops one by one.
UNSUPPORTED = frozenset({Op.ERF, Op.ATTENTION})
missing = set(Op) - set(LOWERINGS) - UNSUPPORTED
if missing:
    raise ImportError(f"tflite lowerings missing for {sorted(m.value for m in missing)}")
