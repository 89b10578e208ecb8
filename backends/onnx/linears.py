"""Which Linears onnxruntime runs on its integer kernels: the ONNX backend's reading of the IR's
one Linear classification (``qexport.ir.linear.classify``). ``lowering.lower_linear`` picks a form
with these predicates and ``notes`` tells the user what runs slowly."""

from __future__ import annotations

from qexport.ir.graph import Graph, Node, QDType
from qexport.ir.linear import LinearForm, classify
from qexport.ir.ops import Op


def integer_input_linear(graph: Graph, node: Node) -> bool:
    """A ``STATIC`` Linear with an 8-bit input: the kind onnxruntime's integer kernels (QGemm,
    MatMulInteger) are for, and whose U8S8 forms saturate on x86 without VNNI."""
    if node.op is not Op.LINEAR:
        return False
    info = classify(graph, node)
    return info.form is LinearForm.STATIC and info.eight_bit_input


def steps_linear(graph: Graph, node: Node) -> bool:
    """A ``STEPS`` Linear (qexport.ir.linear) with a float bias: lowered as a float32 Gemm of the
    integer steps ``q - z`` (``lowering._dynamic_linear_inputs``), exactly as the IR computes it."""
    if node.op is not Op.LINEAR:
        return False
    info = classify(graph, node)
    return info.form is LinearForm.STEPS and info.b_spec is None


def qgemm_linear(graph: Graph, node: Node) -> bool:
    """A ``STATIC`` Linear onnxruntime's integer kernels take: 8-bit input, symmetric int8 weight,
    and a float bias or an int32 one of scale s_x·s_w (``lowering._integer_linear_inputs``)."""
    if node.op is not Op.LINEAR:
        return False
    info = classify(graph, node)
    return (
        info.form is LinearForm.STATIC
        and info.eight_bit_input
        and info.symmetric_weight
        and (info.b_spec is None or info.integer_bias)
    )


def int16_linear(graph: Graph, node: Node) -> bool:
    """A ``STATIC`` Linear with a symmetric int16 input, symmetric int8 weight, and a float bias or
    an int32 one of scale s_x·s_w: onnxruntime has no int16 GEMM, so ``int16_linear`` sums its
    steps in two 8-bit halves on MatMulInteger (whose U8S8 form saturates on x86 without VNNI)."""
    if node.op is not Op.LINEAR:
        return False
    info = classify(graph, node)
    return (
        info.form is LinearForm.STATIC
        and info.x_spec is not None
        and info.x_spec.dtype is QDType.INT16
        and not info.x_spec.zero_point.any()
        and info.w_spec is not None
        and info.w_spec.dtype is QDType.INT8
        and info.symmetric_weight
        and (info.b_spec is None or info.integer_bias)
    )


def float_linears(graph: Graph, integer_linears: bool = True) -> int:
    """Linears with a quantized weight but no static 8-bit input (nor, in the integer form, run-time
    integer steps or an int16 input summed in halves): onnxruntime has no integer kernel for them
    and runs MatMulNBits on a float input."""
    return sum(
        node.op is Op.LINEAR
        and node.inputs[1] in graph.quant
        and not integer_input_linear(graph, node)
        and not (integer_linears and (steps_linear(graph, node) or int16_linear(graph, node)))
        for node in graph.nodes
    )
