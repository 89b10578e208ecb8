"""Linear -> FULLY_CONNECTED: which integer kernel each IR Linear gets, and how its output
keeps the IR's arithmetic (docs/backend-tflite.md, "How each IR op becomes built-in ops")."""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from qexport.backends.tflite.builder import Quant
from qexport.backends.tflite.context import OP, OPT, Ctx, quant_of
from qexport.backends.tflite.emit import make_options, reshape_into, reshape_to
from qexport.ir.arith import dequantize
from qexport.ir.graph import Node, QDType, QuantSpec
from qexport.ir.linear import LinearForm, LinearInfo, classify


def lower_linear(ctx: Ctx, node: Node) -> None:
    """FULLY_CONNECTED on a 2-D view [tokens, K] (no keep_num_dims, so plain op versions).

    - input with a static spec -> QUANTIZE, int8 FC (per-channel weights, int32 bias) whose
      output carries the IR's spec on the Linear output (required: int8 FC writes int8);
      without an output spec a float FC sums the integers themselves (``q - zp`` and the int8
      weights as integer-valued floats, exact below 2**24) and one MUL applies the IR's scale:
      the IR's arithmetic, at float speed — see docs/backend-tflite.md;
    - input with a dynamic per-token spec -> hybrid FC (float in/out, int8 per-channel
      weights; the kernel quantizes each token row at run time, asymmetrically as the IR says);
    - input with PyTorch's dynamic uint7 spec -> the rule in float ops, a float FC of the
      integer steps (``_torch_dynamic_linear``);
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
    fc = make_options(fb.FullyConnectedOptionsT)

    info = classify(g, node)
    if info.form is LinearForm.STATIC and out_spec is not None:
        _integer_linear(ctx, node, rows)
        return
    if out_spec is None and _sums_exactly_in_float(info):
        _integer_valued_linear(ctx, node, rows)
        return

    if info.form is LinearForm.STEPS and in_spec is not None and in_spec.dtype is QDType.UINT7:
        _torch_dynamic_linear(ctx, node, rows)
        return
    if in_spec is not None and in_spec.dynamic and w_spec is not None:
        _hybrid_linear(ctx, node)
        return
    else:
        x2 = reshape_to(ctx, ctx.float_in(x_name), (rows, k), f"{x_name}.2d")
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
    reshape_into(ctx, y2, node)


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
        options=make_options(
            fb.FullyConnectedOptionsT, keepNumDims=True, asymmetricQuantizeInputs=asymmetric
        ),
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
    x2 = reshape_to(ctx, ctx.quantized(x_name), (rows, k), f"{x_name}_quantized.2d")
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
        reshape_into(ctx, fc("", weight, bias, everything, _part_spec(out_spec, main)), node, exact=True)
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
            options=make_options(fb.ConcatenationOptionsT, axis=1),
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
    reshape_into(ctx, y, node, exact=True)


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


def _sums_exactly_in_float(info: LinearInfo) -> bool:
    """A ``STATIC`` Linear with an 8-bit input, int8 (not int4) weights and an int32 (or float, or
    no) bias: its integers can be summed as integer-valued floats (see _integer_valued_linear)."""
    return (
        info.form is LinearForm.STATIC
        and info.eight_bit_input
        and info.w_spec is not None
        and info.w_spec.dtype is QDType.INT8
        and (info.b_spec is None or info.b_spec.dtype is QDType.INT32)
    )


def _integer_valued_linear(ctx: Ctx, node: Node, rows: int) -> None:
    """The IR's integer Linear on float kernels: ``(sum (q - zp) * q_w + q_b) * s_b``.

    TFLite's int8 FC must write int8, so a Linear with a float output cannot use it. Instead
    the same integers go through a float FC as integer-valued floats: ``x / s`` (DIV), QUANTIZEd
    into a tensor whose params are (1, zp) and DEQUANTIZEd, is ``q - zp``; the weight's buffer is read through a second tensor with scale 1 (the
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
        # q - zp by ops that keep each tensor's params (TFLite's RESHAPE may not change them, and
        # strict readers such as vela refuse a file where it does): DIV is the IR's own x / s,
        # QUANTIZE with scale 1 rounds and clamps it beside zp, DEQUANTIZE gives the steps.
        dtype, params = quant_of(x_spec)
        x2 = reshape_to(ctx, ctx.float_in(x_name), (rows, k), f"{x_name}.2d")
        scaled = ctx.b.tensor(f"{x_name}_over_scale.2d", (rows, k), "float32")
        divisor = ctx.b.scalar(f"{x_name}_scale", x_spec.scale, "float32")
        ctx.b.op(
            OP.DIV, [x2, divisor], [scaled], options=make_options(fb.DivOptionsT), options_type=OPT.DivOptions
        )
        as_integers = Quant(np.asarray(1.0, np.float32), np.asarray(params.zero_point))
        integers = ctx.b.tensor(f"{x_name}_integers.2d", (rows, k), dtype, as_integers)
        ctx.b.op(OP.QUANTIZE, [scaled], [integers], version=2 if dtype == "int16" else 1)
        steps = ctx.b.tensor(name, (rows, k), "float32")
        ctx.b.op(OP.DEQUANTIZE, [integers], [steps], version=2)
    if not ctx.b.has(f"{w_name}_quantized"):
        ctx.b.constant(
            f"{w_name}_quantized", weight, Quant(w_spec.scale, w_spec.zero_point.astype(np.int64), 0)
        )
    w_int = ctx.b.integer_view(f"{w_name}_integers", ctx.b.index[f"{w_name}_quantized"], weight.shape)
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
        options=make_options(fb.FullyConnectedOptionsT),
        options_type=OPT.FullyConnectedOptions,
    )
    y = ctx.b.tensor(f"{out}.2d", (rows, n_out), "float32")
    scale_t = ctx.b.constant(f"{out}.scale", np.broadcast_to(np.asarray(scale, np.float32), (n_out,)).copy())
    ctx.b.op(OP.MUL, [acc, scale_t], [y], options=make_options(fb.MulOptionsT), options_type=OPT.MulOptions)
    if b_name and b_spec is None:
        with_bias = ctx.b.tensor(f"{out}.biased.2d", (rows, n_out), "float32")
        ctx.b.op(
            OP.ADD,
            [y, ctx.constant(b_name)],
            [with_bias],
            options=make_options(fb.AddOptionsT),
            options_type=OPT.AddOptions,
        )
        y = with_bias
    reshape_into(ctx, y, node)


def _torch_dynamic_linear(ctx: Ctx, node: Node, rows: int) -> None:
    """PyTorch's dynamic Linear (a uint7 run-time spec over the whole input, symmetric int8
    weights; ``arith.dynamic_params``): LiteRT's hybrid FC quantizes by XNNPACK's rule, per row,
    so the rule is written out in float ops over the [rows, K] view; the steps ``q - zp`` then go
    through a float FC with the integer weights (integer sums, exact below 2**24), and
    ``· scale · s_w + b`` rounds as the IR does (``qexport.ir.linear``, ``STEPS``)."""
    g = ctx.graph
    x_name, w_name = node.inputs[0], node.inputs[1]
    b_name = node.inputs[2] if len(node.inputs) > 2 else ""
    out, w_spec = node.outputs[0], g.quant[w_name]
    weight = g.constants[w_name]
    n_out, k = weight.shape

    def emit(code: int, inputs: list[int], name: str, shape: tuple[int, ...] = (), **kw: object) -> int:
        dtype = str(kw.pop("dtype", "float32"))
        tensor = ctx.b.tensor(name, shape, dtype)
        ctx.b.op(code, inputs, [tensor], **kw)  # type: ignore[arg-type]
        return tensor

    def const(value: float) -> int:
        return ctx.b.scalar("f32", np.float32(value))

    if ctx.b.has(f"{x_name}_steps.2d"):  # Q, K and V share their input's integers
        steps, scale = ctx.b.index[f"{x_name}_steps.2d"], ctx.b.index[f"{x_name}_dynscale"]
    else:
        x2 = reshape_to(ctx, ctx.float_in_raw(x_name), (rows, k), f"{x_name}.2d")
        reducer = {
            "options": make_options(fb.ReducerOptionsT, keepDims=False),
            "options_type": OPT.ReducerOptions,
        }
        axes = ctx.int_vector("axes", [0, 1])
        low = emit(OP.REDUCE_MIN, [x2, axes], f"{x_name}_rmin", **reducer)
        high = emit(OP.REDUCE_MAX, [x2, axes], f"{x_name}_rmax", **reducer)
        low = emit(OP.MINIMUM, [low, const(0.0)], f"{x_name}_min0")
        high = emit(OP.MAXIMUM, [high, const(0.0)], f"{x_name}_max0")
        sub = {"options": fb.SubOptionsT(), "options_type": OPT.SubOptions}
        div = {"options": make_options(fb.DivOptionsT), "options_type": OPT.DivOptions}
        mul = {"options": make_options(fb.MulOptionsT), "options_type": OPT.MulOptions}
        width = emit(OP.SUB, [high, low], f"{x_name}_width", **sub)
        nonzero = emit(OP.GREATER, [width, const(0.0)], f"{x_name}_nonzero", dtype="bool")
        safe = emit(OP.SELECT_V2, [nonzero, width, const(127.0)], f"{x_name}_width_safe")
        scale = emit(OP.DIV, [safe, const(127.0)], f"{x_name}_dynscale", **div)
        multiplier = emit(OP.DIV, [const(1.0), scale], f"{x_name}_multiplier", **div)
        shift = emit(OP.DIV, [emit(OP.NEG, [low], f"{x_name}_neg_min"), scale], f"{x_name}_zp_raw", **div)
        shift = emit(OP.MAXIMUM, [shift, const(0.0)], f"{x_name}_zp_low")
        shift = emit(OP.MINIMUM, [shift, const(127.0)], f"{x_name}_zp_clip")
        zp = emit(OP.ROUND, [shift], f"{x_name}_zp")
        scaled = emit(OP.MUL, [x2, multiplier], f"{x_name}_scaled.2d", (rows, k), **mul)
        rounded = emit(OP.ROUND, [scaled], f"{x_name}_rounded.2d", (rows, k))
        shifted = emit(
            OP.ADD,
            [rounded, zp],
            f"{x_name}_shifted.2d",
            (rows, k),
            options=make_options(fb.AddOptionsT),
            options_type=OPT.AddOptions,
        )
        q = emit(OP.MAXIMUM, [shifted, const(0.0)], f"{x_name}_q_low.2d", (rows, k))
        q = emit(OP.MINIMUM, [q, const(127.0)], f"{x_name}_q.2d", (rows, k))
        steps = emit(OP.SUB, [q, zp], f"{x_name}_steps.2d", (rows, k), **sub)
    if not ctx.b.has(f"{w_name}_quantized"):
        ctx.b.constant(
            f"{w_name}_quantized", weight, Quant(w_spec.scale, w_spec.zero_point.astype(np.int64), 0)
        )
    w_int = ctx.b.integer_view(f"{w_name}_integers", ctx.b.index[f"{w_name}_quantized"], weight.shape)
    w = emit(OP.DEQUANTIZE, [w_int], f"{w_name}_integers_float", weight.shape, version=5)
    fc = {"options": make_options(fb.FullyConnectedOptionsT), "options_type": OPT.FullyConnectedOptions}
    acc = emit(OP.FULLY_CONNECTED, [steps, w], f"{out}.acc", (rows, n_out), **fc)
    mul = {"options": make_options(fb.MulOptionsT), "options_type": OPT.MulOptions}
    y = emit(OP.MUL, [acc, scale], f"{out}.row_rescaled.2d", (rows, n_out), **mul)
    w_scale = np.broadcast_to(w_spec.scale, (n_out,)).astype(np.float32)
    y = emit(OP.MUL, [y, ctx.b.constant(f"{out}.w_scale", w_scale)], f"{out}.2d", (rows, n_out), **mul)
    if b_name:
        y = emit(
            OP.ADD,
            [y, ctx.constant(b_name, _float_const(ctx, b_name))],
            f"{out}.biased.2d",
            (rows, n_out),
            options=make_options(fb.AddOptionsT),
            options_type=OPT.AddOptions,
        )
    reshape_into(ctx, y, node)


def _float_const(ctx: Ctx, name: str) -> np.ndarray:
    spec = ctx.graph.quant.get(name)
    array = ctx.graph.constants[name]
    return dequantize(array, spec) if spec is not None else array
