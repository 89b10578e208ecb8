"""One small function per IR op: emit the ONNX nodes computing that op's output.

Each function receives the builder, the IR node, its resolved input names and the name its
result must have; it returns nothing. ``LOWERINGS`` is the table; ``check`` consults it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from qexport.backends import registrar
from qexport.backends.onnx.attention import lower_attention
from qexport.backends.onnx.builder import OnnxBuilder
from qexport.backends.onnx.int16_linear import lower_int16_linear
from qexport.backends.onnx.linears import int16_linear, qgemm_linear, steps_linear
from qexport.backends.onnx.symbolic import expr_tensor, shape_tensor
from qexport.ir.graph import Node
from qexport.ir.ops import Op

Lowering = Callable[[OnnxBuilder, Node, list[str], str], None]
LOWERINGS: dict[Op, Lowering] = {}

_ONNX_DTYPES = {
    "float32": onnx.TensorProto.FLOAT,
    "int64": onnx.TensorProto.INT64,
    "int32": onnx.TensorProto.INT32,
    "bool": onnx.TensorProto.BOOL,
    "int8": onnx.TensorProto.INT8,
    "uint8": onnx.TensorProto.UINT8,
    "int16": onnx.TensorProto.INT16,
}


lowers = registrar(LOWERINGS)


def _same(onnx_op: str) -> Lowering:
    def lower(b: OnnxBuilder, node: Node, xs: list[str], out: str) -> None:
        b.node(onnx_op, [x for x in xs if x], out, name=node.name)

    return lower


for _op, _onnx in {
    Op.ADD: "Add",
    Op.SUB: "Sub",
    Op.MUL: "Mul",
    Op.DIV: "Div",
    Op.POW: "Pow",
    Op.MATMUL: "MatMul",
    Op.TANH: "Tanh",
    Op.RELU: "Relu",
    Op.SQRT: "Sqrt",
    Op.EXP: "Exp",
    Op.ERF: "Erf",
    Op.NEG: "Neg",
    Op.ABS: "Abs",
    Op.WHERE: "Where",
    Op.EQUAL: "Equal",
}.items():
    LOWERINGS[_op] = _same(_onnx)
LOWERINGS[Op.ATTENTION] = lower_attention  # made by the fusion pass (OnnxBackend.build)


@lowers(Op.GATHER)
def lower_gather(b, node, xs, out):
    """Quantized tables are gathered as integers, then only the picked rows are dequantized:
    DequantizeLinear of the whole table would run on every inference (ORT keeps DQ unfolded)."""
    table = node.inputs[0]
    if table not in b.graph.constants:
        b.node("Gather", [table, xs[1]], out, name=node.name, axis=0)
        return
    spec = b.graph.quant.get(table)
    if spec is None or spec.axis != 0 or np.any(spec.zero_point != 0):
        source = (
            b.initializer(table, b.graph.constants[table])
            if spec is None
            else b.dequantized_constant(table, b.graph.constants[table], spec, axis=spec.axis)
        )
        b.node("Gather", [source, xs[1]], out, name=node.name, axis=0)
        return
    integers = b.initializer(f"{table}_quantized", b.graph.constants[table])
    scale = b.initializer(f"{table}_scale", spec.scale)
    rows = b.node("Gather", [integers, xs[1]], f"{out}_rows", name=node.name, axis=0)
    row_scale = b.node("Gather", [scale, xs[1]], f"{out}_row_scale", name=f"{node.name}_scale", axis=0)
    # (q - 0) * scale in float32: the same single rounding as DequantizeLinear.
    real = b.node("Cast", [rows], f"{out}_rows_float", to=onnx.TensorProto.FLOAT)
    scale_col = b.node("Unsqueeze", [row_scale, b.const(np.array([-1], np.int64))], f"{out}_scale_column")
    b.node("Mul", [real, scale_col], out, name=f"{node.name}_dequantize")


@lowers(Op.LINEAR)
def lower_linear(b, node, xs, out):
    """Gemm on [rows, K] with the weight stored transposed [K, M] (+ bias), reshaped around it
    for 3-D inputs. An integer Linear (static 8-bit input, int8 weight) multiplies integer-valued
    floats and rescales after the Gemm, so that onnxruntime's fused QGemm and the unfused graph
    give the same bits; an int16 input is summed in two 8-bit halves (``int16_linear``); anything
    else is a Gemm of dequantized values. See docs/backend-onnx.md.
    """
    graph = b.graph
    x, w = node.inputs[0], node.inputs[1]
    static_input = x not in graph.inputs and x not in graph.constants
    if b.integer_linears and static_input and int16_linear(graph, node):
        lower_int16_linear(b, node, out)
        return
    integers = graph.constants[w]
    in_shape = (graph.values.get(x) or graph.inputs[x]).shape
    flat = len(in_shape) == 2
    exact = _integer_linear_inputs(b, node) or _dynamic_linear_inputs(b, node, flat)
    if exact is not None:
        operands, after = exact
    else:
        spec = graph.quant.get(w)
        transposed = np.ascontiguousarray(integers.T)
        weight = (
            b.dequantized_constant(w, transposed, spec, axis=1)
            if spec is not None
            else b.initializer(w, transposed)
        )
        operands, after = [xs[0], weight] + ([xs[2]] if len(xs) > 2 and xs[2] else []), []
    if not flat:
        rows = b.const(np.array([-1, integers.shape[1]], np.int64))
        operands[0] = b.node("Reshape", [operands[0], rows], f"{out}_rows")
    steps = [("Gemm", node.name, operands), *after]
    if not flat:
        steps.append(
            ("Reshape", f"{node.name}_reshape", [shape_tensor(b, list(graph.values[node.outputs[0]].shape))])
        )
    y = ""
    for i, (op, name, inputs) in enumerate(steps):
        # Intermediate results: <out>_gemm, <out>_mul, <out>_add; a second Mul is <out>_mul_1.
        repeat = sum(earlier == op for earlier, _, _ in steps[:i])
        suffix = op.lower() + (f"_{repeat}" if repeat else "")
        result = out if i == len(steps) - 1 else f"{out}_{suffix}"
        y = b.node(op, ([y] if y else []) + inputs, result, name=name)


Step = tuple[str, str, list[str]]  # ONNX op, node name, inputs after the running result


def _integer_linear_inputs(b: OnnxBuilder, node: Node) -> tuple[list[str], list[Step]] | None:
    """Gemm operands as integer-valued floats, then the rescale by s_x·s_w (and a float bias to
    add after it); None unless input and weight are integers the way the IR's exact Linear reads them.

    A float32 Gemm of integers is exact while every partial sum stays below 2²⁴ (MiniLM's worst
    case bound, 255 · Σ|q_w| + |q_b|, is 8.4 M): unfused, onnxruntime then computes the IR's
    ``(acc + q_bias) · s_x·s_w`` bit for bit, and fused, QGemm with unit scales does the same.
    """
    if not b.integer_linears:
        return None
    graph = b.graph
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    if not qgemm_linear(graph, node) or x in graph.inputs or x in graph.constants:
        return None
    x_spec, w_spec, b_spec = graph.quant[x], graph.quant[w], graph.quant.get(bias)
    one = b.const(np.array(1.0, np.float32))
    x_int = b.activation_steps(x)
    w_q = b.initializer(f"{w}_quantized", np.ascontiguousarray(graph.constants[w].T))
    # The weight's own all-zero zero point: onnxruntime rewrites int8 zero points to uint8 under
    # the initializer's name (x64quantprecision), and one shared by several weights fails that.
    w_zero = b.initializer(f"{w}_zero_point", w_spec.zero_point.astype(np.int8))
    ones = b.const(np.ones(w_spec.zero_point.shape, np.float32))
    operands = [x_int, b.node("DequantizeLinear", [w_q, ones, w_zero], f"{w}_integers", axis=1)]
    if b_spec is not None:
        b_q = b.initializer(f"{bias}_quantized", graph.constants[bias])
        operands.append(b.node("DequantizeLinear", [b_q, one], f"{bias}_integers"))
    x_scale, w_scale = b.initializer(f"{x}_scale", x_spec.scale), b.initializer(f"{w}_scale", w_spec.scale)
    rescale = b.node("Mul", [x_scale, w_scale], f"{w}_rescale")
    after: list[Step] = [("Mul", f"{node.name}_rescale", [rescale])]
    if bias and b_spec is None:
        after.append(("Add", f"{node.name}_bias", [b.initializer(bias, graph.constants[bias])]))
    return operands, after


def _dynamic_linear_inputs(b: OnnxBuilder, node: Node, flat: bool) -> tuple[list[str], list[Step]] | None:
    """A Linear whose input is quantized per token at run time (``dynamic``, XNNPACK's
    asymmetric rule), the way the IR's exact Linear reads it: a float32 Gemm of the steps
    ``q - z`` (integer-valued, from the input's run-time quantizer) by the integer weights, then
    ``· row scale``, ``· s_w`` and ``+ bias``, each rounded once as the IR does.

    The integer weights are ``Cast(W_quantized)``, a constant onnxruntime folds at load. A
    DequantizeLinear there would be rewritten into MatMulNBits, which for a float input at
    128 rows ran ~3.5× slower than the float Gemm (docs/backend-onnx.md).
    """
    graph = b.graph
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    cached = b.cache.get(f"{x}:steps")
    if not b.integer_linears or cached is None or not steps_linear(graph, node):
        return None
    w_spec = graph.quant[w]
    steps, row_scale = cached
    if not flat:  # [batch, seq, 1] -> [rows, 1], next to the Gemm's [rows, M]
        key = f"{x}:row_scale"
        if key not in b.cache:
            column = b.const(np.array([-1, 1], np.int64))
            b.cache[key] = b.node("Reshape", [row_scale, column], f"{x}_row_scale")
        row_scale = b.cache[key]
    w_q = b.initializer(f"{w}_quantized", np.ascontiguousarray(graph.constants[w].T))
    w_zero = b.initializer(f"{w}_zero_point", w_spec.zero_point.astype(np.int8))
    real = [b.node("Cast", [t], f"{t}_float", to=onnx.TensorProto.FLOAT) for t in (w_q, w_zero)]
    w_int = b.node("Sub", real, f"{w}_integers")  # q - z in float32: exact for int8
    after: list[Step] = [
        ("Mul", f"{node.name}_row_rescale", [row_scale]),
        ("Mul", f"{node.name}_rescale", [b.initializer(f"{w}_scale", w_spec.scale)]),
    ]
    if bias:
        after.append(("Add", f"{node.name}_bias", [b.initializer(bias, graph.constants[bias])]))
    return [steps, w_int], after


@lowers(Op.LAYER_NORM)
def lower_layer_norm(b, node, xs, out):
    axes = int(node.attrs["num_axes"])
    shape = b.graph.values[node.outputs[0]].shape[-axes:]
    if not all(isinstance(d, int) for d in shape):
        raise_unsupported(node, "LayerNorm over a symbolic dim")
    size = int(np.prod(shape))
    weight = xs[1] if len(xs) > 1 and xs[1] else b.const(np.ones(shape, np.float32))
    bias = xs[2] if len(xs) > 2 and xs[2] else b.const(np.zeros(size, np.float32).reshape(shape))
    attrs = {"axis": -axes, "epsilon": float(node.attrs["eps"])}
    if node.name not in b.exact:
        b.node("LayerNormalization", [xs[0], weight, bias], out, name=node.name, **attrs)
        return
    # A quantizer reads it and the recipe asks for exact floats: normalize in float64 and round
    # once, the IR's exact LayerNorm (docs/backend-onnx.md, "LayerNorm in float64").
    wide = [b.cached(f"{v}_float64", "Cast", [v], to=onnx.TensorProto.DOUBLE) for v in (xs[0], weight, bias)]
    normalized = b.node("LayerNormalization", wide, f"{out}_float64", **attrs)
    b.node("Cast", [normalized], out, name=node.name, to=onnx.TensorProto.FLOAT)


@lowers(Op.GELU)
def lower_gelu(b, node, xs, out):
    b.node("Gelu", xs[:1], out, name=node.name, approximate=node.attrs.get("approximate", "none"))


@lowers(Op.SOFTMAX)
def lower_softmax(b, node, xs, out):
    b.node("Softmax", xs[:1], out, name=node.name, axis=int(node.attrs["axis"]))


@lowers(Op.RSQRT)
def lower_rsqrt(b, node, xs, out):
    root = b.node("Sqrt", xs[:1], f"{out}_sqrt")
    b.node("Reciprocal", [root], out, name=node.name)


@lowers(Op.NOT_EQUAL)
def lower_not_equal(b, node, xs, out):
    same = b.node("Equal", xs[:2], f"{out}_equal")
    b.node("Not", [same], out, name=node.name)


@lowers(Op.RESHAPE)
def lower_reshape(b, node, xs, out):
    """Symbolic entries equal to the input's dim at the same position become 0 (copy)."""
    source = b.graph.values.get(node.inputs[0]) or b.graph.inputs.get(node.inputs[0])
    in_shape = source.shape if source is not None else ()
    target = list(node.attrs["shape"])
    simplified = [
        0 if (isinstance(d, str) and i < len(in_shape) and in_shape[i] == d) else d
        for i, d in enumerate(target)
    ]
    b.node("Reshape", [xs[0], shape_tensor(b, simplified)], out, name=node.name)


@lowers(Op.REQUANTIZE)
def lower_requantize(b, node, xs, out):
    """Identity: the QuantizeLinear of the output's spec after it makes the requantization."""
    b.node("Identity", xs[:1], out, name=node.name)


@lowers(Op.TRANSPOSE)
def lower_transpose(b, node, xs, out):
    b.node("Transpose", xs[:1], out, name=node.name, perm=list(node.attrs["perm"]))


@lowers(Op.SLICE)
def lower_slice(b, node, xs, out):
    a = node.attrs
    b.node(
        "Slice",
        [
            xs[0],
            expr_tensor(b, a["start"]),
            expr_tensor(b, a["end"]),
            b.const(np.array([a["axis"]], np.int64)),
            b.const(np.array([a["step"]], np.int64)),
        ],
        out,
        name=node.name,
    )


@lowers(Op.CONCAT)
def lower_concat(b, node, xs, out):
    b.node("Concat", [x for x in xs if x], out, name=node.name, axis=int(node.attrs["axis"]))


@lowers(Op.EXPAND)
def lower_expand(b, node, xs, out):
    shape = [1 if d == -1 else d for d in node.attrs["shape"]]  # 1 broadcasts: keeps the input dim
    b.node("Expand", [xs[0], shape_tensor(b, shape)], out, name=node.name)


@lowers(Op.SQUEEZE)
def lower_squeeze(b, node, xs, out):
    b.node("Squeeze", [xs[0], b.const(np.array(node.attrs["axes"], np.int64))], out, name=node.name)


@lowers(Op.UNSQUEEZE)
def lower_unsqueeze(b, node, xs, out):
    b.node("Unsqueeze", [xs[0], b.const(np.array(node.attrs["axes"], np.int64))], out, name=node.name)


@lowers(Op.CAST)
def lower_cast(b, node, xs, out):
    b.node("Cast", xs[:1], out, name=node.name, to=_ONNX_DTYPES[node.attrs["to"]])


@lowers(Op.REDUCE_MEAN, Op.REDUCE_SUM, Op.REDUCE_MAX)
def lower_reduce(b, node, xs, out):
    op = {Op.REDUCE_MEAN: "ReduceMean", Op.REDUCE_SUM: "ReduceSum", Op.REDUCE_MAX: "ReduceMax"}[node.op]
    b.node(
        op,
        [xs[0], b.const(np.array(node.attrs["axes"], np.int64))],
        out,
        name=node.name,
        keepdims=int(bool(node.attrs["keepdims"])),
    )


@lowers(Op.CUMSUM)
def lower_cumsum(b, node, xs, out):
    b.node("CumSum", [xs[0], b.const(np.array(int(node.attrs["axis"]), np.int64))], out, name=node.name)


@lowers(Op.PAD)
def lower_pad(b, node, xs, out):
    pads = [p[0] for p in node.attrs["pads"]] + [p[1] for p in node.attrs["pads"]]
    dtype = b.graph.values[node.outputs[0]].dtype
    value = b.const(np.array(node.attrs["value"], dtype=dtype))
    b.node("Pad", [xs[0], b.const(np.array(pads, np.int64)), value], out, name=node.name, mode="constant")


def raise_unsupported(node: Node, what: str) -> None:
    from qexport.errors import QExportError

    raise QExportError(f"onnx backend cannot lower node {node.name!r} ({node.op.value}): {what}")


missing = set(Op) - set(LOWERINGS)
if missing:
    raise ImportError(f"onnx lowerings missing for {sorted(m.value for m in missing)}")
