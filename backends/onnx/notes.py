"""What the user is told about an ONNX file: the CPU advice onnxruntime needs (session config
entries) and the Linears that cannot run on its integer kernels (docs/backend-onnx.md)."""

from __future__ import annotations

from typing import Any

from qexport.backends.onnx.linears import float_linears, int16_linear, integer_input_linear, steps_linear
from qexport.ir.graph import Graph
from qexport.ir.ops import Op
from qexport.report.notes import WITHOUT_VNNI, note

PRECISION_NOTE = note(
    "onnx: on this CPU (no VNNI) open model.onnx with session config 'session.x64quantprecision' = '1'",
    "onnxruntime's U8S8 kernels saturate on x86 CPUs without VNNI (AVX2-only) and the int8 Linears "
    "lose accuracy unless the session sets it (docs/backend-onnx.md); the manifest's "
    "session_config_x86_without_vnni lists it",
    cpu=WITHOUT_VNNI,
)
SPEED_NOTE = note(
    "onnx: open model.onnx with the manifest's session_config (denormals as zero: ~25 % faster)",
    "SessionOptions.add_session_config_entry('session.set_denormal_as_zero', '1'): softmax over padded "
    "positions otherwise runs on denormals (MiniLM int8 ~25 % slower, same outputs; docs/backend-onnx.md)",
)


HTP_NOTE = note(
    "onnx: made for Qualcomm HTP v73+; open it with QNN provider option htp_arch='73' (or newer)",
    "the manifest's qnn_provider_options list it. onnxruntime-qnn compiles for v68 by default, "
    "where the 16-bit FullyConnected with per-channel weights drifts (MiniLM: 21 dB from the IR "
    "instead of 44 dB; docs/decisions/0005-htp-arch.md)",
)


def cpu_notes(graph: Graph, integer_linears: bool) -> list[dict[str, Any]]:
    """Every note for a CPU (not NPU-form) file of ``graph``."""
    notes = slow_path_notes(graph, integer_linears)
    if any(node.op is Op.SOFTMAX for node in graph.nodes):
        notes.append(SPEED_NOTE)
    u8s8 = [
        integer_input_linear(graph, node) or (integer_linears and int16_linear(graph, node))
        for node in graph.nodes
    ]
    if any(u8s8):  # U8S8 saturates there
        notes.append(PRECISION_NOTE)
    return notes


def slow_path_notes(graph: Graph, integer_linears: bool = True) -> list[dict[str, Any]]:
    """What in this graph onnxruntime cannot run on its integer kernels (docs/backend-onnx.md):
    it fuses QGemm only for a static per-tensor 8-bit input, an int8 weight and a per-tensor
    (or float) output."""
    per_channel_outputs = 0
    for node in graph.nodes:
        if node.op is not Op.LINEAR or node.inputs[1] not in graph.quant:
            continue
        y_spec = graph.quant.get(node.outputs[0])
        if integer_input_linear(graph, node) and y_spec is not None and y_spec.axis is not None:
            per_channel_outputs += 1
    notes = []
    if integer_linears and (steps := sum(steps_linear(graph, node) for node in graph.nodes)):
        notes.append(
            note(
                f"onnx: {steps} Linears with run-time input scales run as float Gemms (slower than fp32); "
                "int8 is the fast ONNX recipe",
                "No onnxruntime integer kernel takes per-token (run-time) input scales: they run as "
                "float32 Gemms of the integer steps, the IR's numbers but slower than fp32 (MiniLM "
                "dynamic ~1.3x; docs/backend-onnx.md)",
            )
        )
    if integer_linears and (wide := sum(int16_linear(graph, node) for node in graph.nodes)):
        notes.append(
            note(
                f"onnx: {wide} int16-input Linears run as two int8 GEMMs each (exact, about fp32 speed "
                "each); int8 is the fast ONNX recipe",
                "onnxruntime has no int16 GEMM: each int16-input Linear is summed in two 8-bit halves "
                "on MatMulInteger, bit for bit the IR's, about one fp32 Gemm's time (MiniLM int16x8 "
                "~1.2x fp32, int8-mixed ~0.6x; docs/backend-onnx.md)",
            )
        )
    if count := float_linears(graph, integer_linears):
        notes.append(
            note(
                f"onnx: {count} quantized Linears run as float MatMuls (no faster than fp32); "
                "int8 is the fast ONNX recipe",
                "Linears with dynamic, int16 or no input quantization run as float MatMuls on the int8 "
                "weights. Create the session with SessionOptions.add_session_config_entry("
                "'session.qdq_matmulnbits_accuracy_level', '1'): onnxruntime's default (4) re-quantizes "
                "their float inputs to int8 at run time (MiniLM dynamic: 30 instead of 36 dB vs the IR; "
                "docs/backend-onnx.md)",
            )
        )
    if per_channel_outputs:
        notes.append(
            note(
                f"onnx: {per_channel_outputs} per-channel Linear outputs are quantized with float ops "
                "(about fp32 speed); int8 is the fast ONNX recipe",
                "onnxruntime's per-axis QuantizeLinear is ~30x slower than float ops, so outputs with "
                "per-channel (outlier) params are quantized with float ops (docs/backend-onnx.md)",
            )
        )
    return notes
