"""A Linear with a static int16 input, summed exactly on int8 kernels (docs/backend-onnx.md).

onnxruntime has no int16 GEMM: the plain lowering dequantizes input and weight for a float
MatMul, which rounds partial sums (32767 · 127 · 1536 is far past float32's 2²⁴) and which
onnxruntime turns into MatMulNBits. Instead the input's steps ``q`` (symmetric, in
[-32768, 32767]) are split into two 8-bit halves, ``q = 256 · high + low`` with
``high = floor(q / 256)`` in [-128, 127] and ``low`` in [0, 255], stacked on the first axis as
uint8 ``[high + 128; low]``, and one MatMulInteger multiplies both by the stored int8 weights
(U8S8, the fast integer GEMM; exact in int32 for any K below 66 000). Joined in float64, where
integers of this size are exact,

    acc + q_b = 256 · Σ (high + 128)·q_w + Σ low·q_w + (q_b − 256·128 · Σ_k q_w)

and the IR's one rounding follows: ``float32((acc + q_b) · s_x·s_w)`` (or ``+ b`` after it for a
float bias) — the reference executor's arithmetic bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx

from qexport.backends.onnx.builder import OnnxBuilder
from qexport.ir.graph import Node

HALF = 256
"""``q = HALF · high + low``."""


def lower_int16_linear(b: OnnxBuilder, node: Node, out: str) -> None:
    graph = b.graph
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    x_spec, w_spec, b_spec = graph.quant[x], graph.quant[w], graph.quant.get(bias)
    double = onnx.TensorProto.DOUBLE
    w_q = b.initializer(f"{w}_quantized", np.ascontiguousarray(graph.constants[w].T))
    # The weight's own all-zero zero point: onnxruntime rewrites int8 weights and zero points to
    # uint8 under their names on x86 without VNNI (x64quantprecision), once per weight.
    w_zero = b.initializer(f"{w}_zero_point", w_spec.zero_point.astype(np.int8))
    sums = b.node(
        "MatMulInteger",
        [_halves(b, x), w_q, b.const(np.array(0, np.uint8)), w_zero],
        f"{out}_halves_sums",
        name=node.name,
    )
    high_sum, low_sum = f"{out}_high_sum", f"{out}_low_sum"
    b.nodes.append(
        onnx.helper.make_node(
            "Split", [sums], [high_sum, low_sum], name=f"{sums}_split", axis=0, num_outputs=2
        )
    )
    # 256 · Σ (high + 128)·q_w + Σ low·q_w + (q_b - 256·128 · Σ_k q_w) is the exact acc + q_b; the
    # constant term is computed from the stored integers in-graph and folded at load.
    columns = b.node("Cast", [w_q], f"{w}_quantized_int32", to=onnx.TensorProto.INT32)
    columns = b.node("ReduceSum", [columns, b.const(np.array([0], np.int64))], f"{w}_column_sums", keepdims=0)
    columns = b.node("Cast", [columns], f"{w}_column_sums_double", to=double)
    constant = b.node("Mul", [columns, b.const(np.float64(-HALF * (HALF // 2)))], f"{w}_offset")
    if b_spec is not None:  # the int32 bias, added to the exact sum as the IR does
        q_bias = b.initializer(f"{bias}_quantized", graph.constants[bias])
        q_bias = b.node("Cast", [q_bias], f"{bias}_integers_double", to=double)
        constant = b.node("Add", [constant, q_bias], f"{w}_offset_and_bias")
    high_sum = b.node("Cast", [high_sum], f"{high_sum}_double", to=double)
    shifted = b.node("Mul", [high_sum, b.const(np.float64(HALF))], f"{out}_high_shifted")
    acc = b.node("Add", [shifted, b.node("Cast", [low_sum], f"{low_sum}_double", to=double)], f"{out}_sum")
    acc = b.node("Add", [acc, constant], f"{out}_acc")
    x_scale, w_scale = b.initializer(f"{x}_scale", x_spec.scale), b.initializer(f"{w}_scale", w_spec.scale)
    rescale = b.node("Mul", [x_scale, w_scale], f"{w}_rescale")  # float32, as the IR's s_x·s_w
    rescale = b.node("Cast", [rescale], f"{w}_rescale_double", to=double)
    y = b.node("Mul", [acc, rescale], f"{out}_rescaled")
    if not bias or b_spec is not None:
        b.node("Cast", [y], out, name=f"{node.name}_round", to=onnx.TensorProto.FLOAT)
        return
    y = b.node("Cast", [y], f"{out}_unbiased", name=f"{node.name}_round", to=onnx.TensorProto.FLOAT)
    b.node("Add", [y, b.initializer(bias, graph.constants[bias])], out, name=f"{node.name}_bias")


def _halves(b: OnnxBuilder, x: str) -> str:
    """``x``'s steps as uint8 halves stacked on the first axis, ``[high + 128; low]``, split once
    per value (Q, K and V read the same input). QuantizeLinear does the split: ``(q - 127.5) / 256``
    lies within 0.499 of ``floor(q / 256)`` (never a tie), and ``q - 256 · high`` is ``low``;
    every value here is an exact float32. One MatMulInteger then takes both halves: two would
    share the weight, which onnxruntime's int8-to-uint8 weight rewrite (x64quantprecision)
    cannot do."""
    key = f"{x}:halves"
    if key not in b.cache:
        steps = b.activation_steps(x)
        below = b.node("Sub", [steps, b.const(np.float32(HALF / 2 - 0.5))], f"{x}_below_half")
        scale, offset = b.const(np.float32(HALF)), b.const(np.array(HALF // 2, np.uint8))
        high = b.node("QuantizeLinear", [below, scale, offset], f"{x}_high")  # high + 128
        shifted = b.node("DequantizeLinear", [high, scale, offset], f"{x}_high_shifted")  # 256 · high
        low = b.node("Sub", [steps, shifted], f"{x}_low_float")
        low = b.node("Cast", [low], f"{x}_low", to=onnx.TensorProto.UINT8)
        b.cache[key] = b.node("Concat", [high, low], f"{x}_halves", axis=0)
    return b.cache[key]
