"""One small function per IR op: emit the ONNX nodes computing that op's output.

Each function receives the builder, the IR node, its resolved input names and the name its
result must have; it returns nothing. ``LOWERINGS`` is the table; ``check`` consults it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from qexport.backends import registrar
from qexport.backends.onnx.builder import OnnxBuilder
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
    Op.WHERE: "Where",
    Op.EQUAL: "Equal",
}.items():
    LOWERINGS[_op] = _same(_onnx)


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
    for 3-D inputs: onnxruntime fuses DQ(activation), DQ(weight, axis=1) and DQ(int32 bias)
    into one QGemm (U8S8 integer kernel, float output). See docs/backend-onnx.md."""
    graph = b.graph
    weight_name = node.inputs[1]
    integers = graph.constants[weight_name]
    spec = graph.quant.get(weight_name)
    if spec is not None:
        weight = b.dequantized_constant(weight_name, np.ascontiguousarray(integers.T), spec, axis=1)
    else:
        weight = b.initializer(weight_name, np.ascontiguousarray(integers.T))
    bias = xs[2] if len(xs) > 2 else ""
    in_info = graph.values.get(node.inputs[0]) or graph.inputs[node.inputs[0]]
    out_shape = list(graph.values[node.outputs[0]].shape)
    gemm_inputs = [xs[0], weight] + ([bias] if bias else [])
    if len(in_info.shape) == 2:
        b.node("Gemm", gemm_inputs, out, name=node.name)
        return
    rows = b.node("Reshape", [xs[0], b.const(np.array([-1, integers.shape[1]], np.int64))], f"{out}_rows")
    gemm_inputs[0] = rows
    product = b.node("Gemm", gemm_inputs, f"{out}_gemm", name=node.name)
    b.node("Reshape", [product, shape_tensor(b, out_shape)], out, name=f"{node.name}_reshape")


@lowers(Op.LAYER_NORM)
def lower_layer_norm(b, node, xs, out):
    axes = int(node.attrs["num_axes"])
    shape = b.graph.values[node.outputs[0]].shape[-axes:]
    if not all(isinstance(d, int) for d in shape):
        raise_unsupported(node, "LayerNorm over a symbolic dim")
    size = int(np.prod(shape))
    weight = xs[1] if len(xs) > 1 and xs[1] else b.const(np.ones(shape, np.float32))
    bias = xs[2] if len(xs) > 2 and xs[2] else b.const(np.zeros(size, np.float32).reshape(shape))
    b.node(
        "LayerNormalization",
        [xs[0], weight, bias],
        out,
        name=node.name,
        axis=-axes,
        epsilon=float(node.attrs["eps"]),
    )


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


@lowers(Op.REDUCE_MEAN, Op.REDUCE_SUM)
def lower_reduce(b, node, xs, out):
    op = "ReduceMean" if node.op is Op.REDUCE_MEAN else "ReduceSum"
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
