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
from qexport.backends.tflite.context import OP, OPT, Ctx, quant_of, to_storage
from qexport.errors import QExportError
from qexport.ir.graph import Node, QDType, QuantSpec
from qexport.ir.ops import Op
from qexport.ir.symbols import evaluate
from qexport.quant.arith import dequantize

Lowering = Callable[[Ctx, Node], None]
LOWERINGS: dict[Op, Lowering] = {}


lowers = registrar(LOWERINGS)


def _options(cls: type, **fields: object) -> object:
    opts = cls()
    for key, value in fields.items():
        setattr(opts, key, value)
    return opts


# -- Linear: the integer kernels ------------------------------------------------------------
@lowers(Op.LINEAR)
def linear(ctx: Ctx, node: Node) -> None:
    """FULLY_CONNECTED on a 2-D view [tokens, K] (no keep_num_dims, so plain op versions).

    - input with a static spec -> QUANTIZE, int8 FC (per-channel weights, int32 bias) whose
      output carries the IR's spec on the Linear output (required: int8 FC writes int8);
      without an output spec a float FC sums the integers themselves (``q - zp`` and the int8
      weights as integer-valued floats, exact below 2**24) and one MUL applies the IR's scale:
      the IR's arithmetic, at float speed — see docs/backend-tflite.md;
    - input with a dynamic per-token spec -> hybrid FC (float in/out, int8 per-channel
      weights; the kernel quantizes each token row at run time, asymmetrically as the IR says);
    - no spec -> float FC (weights dequantized at load if stored as int8).
    """
    g = ctx.graph
    x_name, w_name = node.inputs[0], node.inputs[1]
    b_name = node.inputs[2] if len(node.inputs) > 2 else ""
    out = node.outputs[0]
    in_spec, w_spec, out_spec = g.quant.get(x_name), g.quant.get(w_name), g.quant.get(out)
    weight = g.constants[w_name]
    n_out, k = weight.shape
    rows = int(np.prod(ctx.shape(x_name)[:-1]))
    fc = _options(fb.FullyConnectedOptionsT)

    if in_spec is not None and not in_spec.dynamic and w_spec is not None and out_spec is not None:
        _integer_linear(ctx, node, rows)
        return
    if out_spec is None and _sums_exactly_in_float(ctx, node):
        _integer_valued_linear(ctx, node, rows)
        return

    if in_spec is not None and in_spec.dynamic and w_spec is not None:
        _hybrid_linear(ctx, node)
        return
    else:
        x2 = _reshape(ctx, ctx.float_in(x_name), (rows, k), f"{x_name}.2d")
        if w_spec is not None:
            # int8 in the file, float at run time: DEQUANTIZE of a constant is done once at load.
            wq = ctx.b.constant(
                f"{w_name}_quantized", weight, Quant(w_spec.scale, w_spec.zero_point.astype(np.int64), 0)
            )
            w = ctx.b.tensor(w_name, weight.shape, "float32")
            ctx.b.op(OP.DEQUANTIZE, [wq], [w], version=5)
        else:
            w = ctx.constant(w_name)
        inputs = [x2, w]
        if b_name:
            inputs.append(ctx.constant(b_name, _float_const(ctx, b_name)))
        version = 1
    y2 = ctx.b.tensor(f"{out}.2d", (rows, n_out), "float32")
    ctx.b.op(
        OP.FULLY_CONNECTED, inputs, [y2], version=version, options=fc, options_type=OPT.FullyConnectedOptions
    )
    _reshape_into(ctx, y2, node)


def _hybrid_linear(ctx: Ctx, node: Node) -> None:
    """Hybrid FC (float in/out, int8 per-channel weights) on the N-D input with keep_num_dims
    (no RESHAPE copies around it): the kernel quantizes each token row at run time — XNNPACK
    by the rule the IR's asymmetric dynamic spec names (``arith.dynamic_params``)."""
    g = ctx.graph
    x_name, w_name = node.inputs[0], node.inputs[1]
    b_name = node.inputs[2] if len(node.inputs) > 2 else ""
    w_spec, asymmetric = g.quant[w_name], not g.quant[x_name].symmetric
    w = ctx.b.constant(
        w_name, g.constants[w_name], Quant(w_spec.scale, w_spec.zero_point.astype(np.int64), 0)
    )
    inputs = [ctx.float_in_raw(x_name), w]
    if b_name:
        inputs.append(ctx.constant(b_name))
    ctx.b.op(
        OP.FULLY_CONNECTED,
        inputs,
        [ctx.output(node.outputs[0])],
        version=12,
        # XNNPACK quantizes the rows asymmetrically either way; the builtin kernels only if asked
        options=_options(fb.FullyConnectedOptionsT, keepNumDims=True, asymmetricQuantizeInputs=asymmetric),
        options_type=OPT.FullyConnectedOptions,
    )


def _integer_linear(ctx: Ctx, node: Node, rows: int) -> None:
    """int8 FULLY_CONNECTED whose int8 result carries the IR's output spec.

    A per-tensor output spec is one FC. A grouped per-channel spec (a few distinct scales, see
    ``grouped_activation_spec``) becomes: one FC over all channels with the largest group's
    params, its other rows zeroed (they dequantize to exactly 0.0); one small FC per other group
    over that group's rows; their float results placed into their channels by a 0/1 matrix
    (a float FC: each output is one exact product) and added. Every op stays XNNPACK-friendly
    and every channel's value is exactly its group's dequantized int8.
    """
    g = ctx.graph
    x_name, w_name = node.inputs[0], node.inputs[1]
    b_name = node.inputs[2] if len(node.inputs) > 2 else ""
    out, out_spec, w_spec = node.outputs[0], g.quant[node.outputs[0]], g.quant[w_name]
    weight = g.constants[w_name]
    bias = g.constants[b_name] if b_name else None
    n_out, k = weight.shape
    x2 = _reshape(ctx, ctx.quantized(x_name), (rows, k), f"{x_name}_quantized.2d")
    groups = _channel_groups(out_spec, n_out)
    main, others = groups[0], groups[1:]

    def fc(
        suffix: str, rows_w: np.ndarray, rows_b: np.ndarray | None, channels: np.ndarray, spec: QuantSpec
    ) -> int:
        w_params = Quant(w_spec.scale[channels], w_spec.zero_point[channels].astype(np.int64), 0)
        inputs = [x2, ctx.b.constant(f"{w_name}{suffix}", rows_w, w_params)]
        if rows_b is not None:
            b_params = Quant(g.quant[b_name].scale[channels], np.zeros(len(channels), np.int64), 0)
            inputs.append(ctx.b.constant(f"{b_name}{suffix}", rows_b, b_params))
        dtype, params = quant_of(spec)
        yq = ctx.b.tensor(f"{out}_quantized{suffix}.2d", (rows, len(channels)), dtype, params)
        ctx.b.op(
            OP.FULLY_CONNECTED,
            inputs,
            [yq],
            version=4,
            options=fb.FullyConnectedOptionsT(),
            options_type=OPT.FullyConnectedOptions,
        )
        y = ctx.b.tensor(f"{out}{suffix}.2d", (rows, len(channels)), "float32")
        ctx.b.op(OP.DEQUANTIZE, [yq], [y], version=2)
        return y

    everything = np.arange(n_out)
    if not others:
        _reshape_into(ctx, fc("", weight, bias, everything, _part_spec(out_spec, main)), node, exact=True)
        return
    keep = np.zeros(n_out, bool)
    keep[main] = True
    main_w = np.where(keep[:, None], weight, np.zeros_like(weight))
    main_b = np.where(keep, bias, np.zeros_like(bias)) if bias is not None else None
    y_main = fc(".main", main_w, main_b, everything, _part_spec(out_spec, main))
    parts = [
        fc(f".group{i}", weight[ch], bias[ch] if bias is not None else None, ch, _part_spec(out_spec, ch))
        for i, ch in enumerate(others, start=1)
    ]
    placed_channels = np.concatenate(others)
    if len(parts) > 1:
        joined = ctx.b.tensor(f"{out}.groups.2d", (rows, len(placed_channels)), "float32")
        ctx.b.op(
            OP.CONCATENATION,
            parts,
            [joined],
            options=_options(fb.ConcatenationOptionsT, axis=1),
            options_type=OPT.ConcatenationOptions,
        )
    else:
        joined = parts[0]
    # The 0/1 placement matrix is stored as int8 (scale 1) and dequantized once at load.
    placement = np.zeros((n_out, len(placed_channels)), np.int8)
    placement[placed_channels, np.arange(len(placed_channels))] = 1
    stored = ctx.b.constant(f"{out}.placement_quantized", placement, Quant(np.float32(1.0), np.int64(0)))
    matrix = ctx.b.tensor(f"{out}.placement", placement.shape, "float32")
    ctx.b.op(OP.DEQUANTIZE, [stored], [matrix], version=2)
    placed = ctx.b.tensor(f"{out}.placed.2d", (rows, n_out), "float32")
    ctx.b.op(
        OP.FULLY_CONNECTED,
        [joined, matrix],
        [placed],
        version=1,
        options=fb.FullyConnectedOptionsT(),
        options_type=OPT.FullyConnectedOptions,
    )
    y = ctx.b.tensor(f"{out}.2d", (rows, n_out), "float32")
    ctx.b.op(OP.ADD, [y_main, placed], [y], options=fb.AddOptionsT(), options_type=OPT.AddOptions)
    _reshape_into(ctx, y, node, exact=True)


def _channel_groups(spec: QuantSpec, channels: int) -> list[np.ndarray]:
    """Channel indices per distinct (scale, zero point); the largest group first."""
    if spec.axis is None:
        return [np.arange(channels)]
    keys = np.stack([spec.scale.astype(np.float64), spec.zero_point.astype(np.float64)], axis=1)
    _, label = np.unique(keys, axis=0, return_inverse=True)
    groups = [np.flatnonzero(label.ravel() == i) for i in range(int(label.max()) + 1)]
    return sorted(groups, key=lambda ch: (-len(ch), int(ch[0])))


def _part_spec(spec: QuantSpec, channels: np.ndarray) -> QuantSpec:
    """The per-tensor spec shared by ``channels`` of a grouped spec."""
    if spec.axis is None:
        return spec
    return QuantSpec(spec.dtype, np.array(spec.scale[channels[0]]), np.array(spec.zero_point[channels[0]]))


def _sums_exactly_in_float(ctx: Ctx, node: Node) -> bool:
    """A static per-tensor 8-bit input, int8 weights and an int32 (or float, or no) bias: the
    Linear's integers can be summed as integer-valued floats (see _integer_valued_linear)."""
    g = ctx.graph
    x_spec, w_spec = g.quant.get(node.inputs[0]), g.quant.get(node.inputs[1])
    if x_spec is None or x_spec.dynamic or x_spec.axis is not None or w_spec is None:
        return False
    if x_spec.dtype not in (QDType.UINT8, QDType.INT8) or w_spec.dtype is not QDType.INT8:
        return False
    b_name = node.inputs[2] if len(node.inputs) > 2 else ""
    b_spec = g.quant.get(b_name) if b_name else None
    return w_spec.axis in (0, None) and (b_spec is None or b_spec.dtype is QDType.INT32)


def _integer_valued_linear(ctx: Ctx, node: Node, rows: int) -> None:
    """The IR's integer Linear on float kernels: ``(sum (q - zp) * q_w + q_b) * s_b``.

    TFLite's int8 FC must write int8, so a Linear with a float output cannot use it. Instead
    the same integers go through a float FC as integer-valued floats: the int8 activation is
    re-read with scale 1 (a RESHAPE to a tensor whose params are (1, zp)) and DEQUANTIZEd to
    ``q - zp``; the weight's buffer is read through a second tensor with scale 1 (the
    ``<w>_quantized`` tensor keeps the IR's per-channel params for readers); the int32 bias
    is stored as float. Products and partial sums are integers, exact in float32 below 2**24
    in any summation order (MiniLM's largest |acc| is far below, see docs/backend-tflite.md),
    and one MUL by the IR's per-channel ``s_b`` is the IR's one rounding.
    """
    g = ctx.graph
    x_name, w_name = node.inputs[0], node.inputs[1]
    b_name = node.inputs[2] if len(node.inputs) > 2 else ""
    out = node.outputs[0]
    x_spec, w_spec = g.quant[x_name], g.quant[w_name]
    weight = g.constants[w_name]
    n_out, k = weight.shape
    name = f"{x_name}_steps.2d"
    if ctx.b.has(name):  # Q, K and V share their input's integers
        steps = ctx.b.index[name]
    else:
        _, params = quant_of(x_spec)
        as_integers = Quant(np.asarray(1.0, np.float32), np.asarray(params.zero_point))
        integers = ctx.b.tensor(f"{x_name}_integers.2d", (rows, k), "int8", as_integers)
        ctx.b.op(
            OP.RESHAPE,
            [ctx.quantized(x_name), ctx.int_vector("shape", [rows, k])],
            [integers],
            options=_options(fb.ReshapeOptionsT, newShape=np.asarray([rows, k], np.int32)),
            options_type=OPT.ReshapeOptions,
        )
        steps = ctx.b.tensor(name, (rows, k), "float32")
        ctx.b.op(OP.DEQUANTIZE, [integers], [steps], version=2)
    if not ctx.b.has(f"{w_name}_quantized"):
        ctx.b.constant(
            f"{w_name}_quantized", weight, Quant(w_spec.scale, w_spec.zero_point.astype(np.int64), 0)
        )
    stored = ctx.b.tensors[ctx.b.index[f"{w_name}_quantized"]]
    w_int = ctx.b.tensor(
        f"{w_name}_integers", weight.shape, "int8", Quant(np.asarray(1.0, np.float32), np.asarray(0))
    )
    ctx.b.tensors[w_int].buffer = stored.buffer  # the same bytes, read with scale 1
    w = ctx.b.tensor(f"{w_name}_integers_float", weight.shape, "float32")
    ctx.b.op(OP.DEQUANTIZE, [w_int], [w], version=5)  # constant: done once at load
    inputs = [steps, w]
    b_spec = g.quant.get(b_name) if b_name else None
    if b_spec is not None:
        inputs.append(ctx.b.constant(f"{b_name}_integers_float", g.constants[b_name].astype(np.float32)))
        scale = b_spec.scale
    else:
        scale = (x_spec.scale * w_spec.scale).astype(np.float32)
    acc = ctx.b.tensor(f"{out}.acc", (rows, n_out), "float32")
    ctx.b.op(
        OP.FULLY_CONNECTED,
        inputs,
        [acc],
        options=_options(fb.FullyConnectedOptionsT),
        options_type=OPT.FullyConnectedOptions,
    )
    y = ctx.b.tensor(f"{out}.2d", (rows, n_out), "float32")
    scale_t = ctx.b.constant(f"{out}.scale", np.broadcast_to(np.asarray(scale, np.float32), (n_out,)).copy())
    ctx.b.op(OP.MUL, [acc, scale_t], [y], options=_options(fb.MulOptionsT), options_type=OPT.MulOptions)
    if b_name and b_spec is None:
        with_bias = ctx.b.tensor(f"{out}.biased.2d", (rows, n_out), "float32")
        ctx.b.op(
            OP.ADD,
            [y, ctx.constant(b_name)],
            [with_bias],
            options=_options(fb.AddOptionsT),
            options_type=OPT.AddOptions,
        )
        y = with_bias
    _reshape_into(ctx, y, node)


def _float_const(ctx: Ctx, name: str) -> np.ndarray:
    spec = ctx.graph.quant.get(name)
    array = ctx.graph.constants[name]
    return dequantize(array, spec) if spec is not None else array


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
        options=_options(fb.GatherOptionsT, axis=0, batchDims=0),
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
    flat = _reshape(ctx, ctx.float_in(ids), (n,), f"{ids}.flat")
    by_rows = _options(fb.GatherOptionsT, axis=0, batchDims=0)
    y = ctx.b.tensor(f"{node.outputs[0]}.flat", (n, width), "float32")
    if rows.shape[0] <= n:
        floats = ctx.b.tensor(f"{table}_float", rows.shape, "float32")
        ctx.b.op(OP.DEQUANTIZE, [stored], [floats], version=5)  # constant: done once at load
        floats = _reshape(ctx, floats, (rows.shape[0], width), f"{table}_float.2d")
        ctx.b.op(OP.GATHER, [floats, flat], [y], options=by_rows, options_type=OPT.GatherOptions)
    else:
        unit = Quant(np.asarray(1.0, np.float32), np.asarray(0))
        integers = ctx.b.tensor(f"{table}_integers", (rows.shape[0], width), "int8", unit)
        ctx.b.tensors[integers].buffer = ctx.b.tensors[stored].buffer  # the same bytes, scale 1
        picked = ctx.b.tensor(f"{node.outputs[0]}.integers", (n, width), "int8", unit)
        ctx.b.op(
            OP.GATHER, [integers, flat], [picked], version=2, options=by_rows, options_type=OPT.GatherOptions
        )
        steps = ctx.b.tensor(f"{node.outputs[0]}.steps", (n, width), "float32")
        ctx.b.op(OP.DEQUANTIZE, [picked], [steps], version=2)
        scales = ctx.b.constant(f"{table}_row_scale", np.asarray(spec.scale, np.float32).reshape(-1, 1))
        row_scale = ctx.b.tensor(f"{node.outputs[0]}.row_scale", (n, 1), "float32")
        ctx.b.op(OP.GATHER, [scales, flat], [row_scale], options=by_rows, options_type=OPT.GatherOptions)
        ctx.b.op(
            OP.MUL, [steps, row_scale], [y], options=_options(fb.MulOptionsT), options_type=OPT.MulOptions
        )
    _reshape_into(ctx, y, node)


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
        options=_options(fb.GeluOptionsT, approximate=approximate),
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
        options=_options(fb.SoftmaxOptionsT, beta=1.0),
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
    mean_opts = _options(fb.ReducerOptionsT, keepDims=True)
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
        options=_options(fb.BatchMatMulOptionsT, adjX=False, adjY=adj_y),
        options_type=OPT.BatchMatMulOptions,
    )


# -- shapes ---------------------------------------------------------------------------------
def _reshape(
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
        options=_options(fb.ReshapeOptionsT, newShape=np.asarray(shape, np.int32)),
        options_type=OPT.ReshapeOptions,
    )
    return out


def _reshape_into(ctx: Ctx, src: int, node: Node, exact: bool = False) -> None:
    """Reshape ``src`` into the node's output; ``exact``: ``src`` already holds the value with
    its spec applied (integer kernel output), so it is the IR value itself, not ``_float``."""
    value = node.outputs[0]
    out = ctx.b.tensor(value, ctx.shape(value), "float32") if exact else ctx.output(value)
    ctx.b.op(
        OP.RESHAPE,
        [src, ctx.int_vector("shape", list(ctx.shape(node.outputs[0])))],
        [out],
        options=_options(fb.ReshapeOptionsT, newShape=np.asarray(ctx.shape(node.outputs[0]), np.int32)),
        options_type=OPT.ReshapeOptions,
    )


@lowers(Op.RESHAPE, Op.SQUEEZE, Op.UNSQUEEZE)
def reshape(ctx: Ctx, node: Node) -> None:
    _reshape_into(ctx, ctx.float_in(node.inputs[0]), node)


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
        options=_options(fb.ConcatenationOptionsT, axis=int(node.attrs["axis"]) % rank),
        options_type=OPT.ConcatenationOptions,
    )


@lowers(Op.EXPAND)
def expand(ctx: Ctx, node: Node) -> None:
    shape = ctx.int_vector("shape", list(ctx.shape(node.outputs[0])))
    ctx.b.op(OP.BROADCAST_TO, [ctx.float_in(node.inputs[0]), shape], [ctx.output(node.outputs[0])])


@lowers(Op.WHERE)
def where(ctx: Ctx, node: Node) -> None:
    ctx.b.op(OP.SELECT_V2, [ctx.float_in(v) for v in node.inputs], [ctx.output(node.outputs[0])])


@lowers(Op.CAST)
def cast(ctx: Ctx, node: Node) -> None:
    ctx.b.op(OP.CAST, [ctx.float_in(node.inputs[0])], [ctx.output(node.outputs[0])])


@lowers(Op.REDUCE_MEAN, Op.REDUCE_SUM)
def reduce(ctx: Ctx, node: Node) -> None:
    rank = len(ctx.shape(node.inputs[0]))
    axes = ctx.int_vector("axes", [int(a) % rank for a in node.attrs["axes"]])
    ctx.b.op(
        OP.MEAN if node.op is Op.REDUCE_MEAN else OP.SUM,
        [ctx.float_in(node.inputs[0]), axes],
        [ctx.output(node.outputs[0])],
        options=_options(fb.ReducerOptionsT, keepDims=bool(node.attrs["keepdims"])),
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
