"""Qualcomm's HTP through onnxruntime's QNN execution provider (PyPI ``onnxruntime-qnn``).

The x86-64 wheel ships the HTP backend as a simulator, so a file's placement and numerics can
be tested here. ``htp_session`` opens a file with the CPU fallback disabled: session creation
fails unless every node runs on QNN. It is the few lines a user writes (README, "--for npu").

``HTP_ARCH``: the NPU form is made for Hexagon v73 and later (Snapdragon 8 Gen 2 onwards). The
simulator compiles for v68 unless told otherwise, and there (and on v69) the 16-bit-activation
FullyConnected with per-channel int8 weights is off by a per-channel constant of several output
steps (std 6.9 steps on a random 1536x384 layer; 0.4 from v73 on): all-MiniLM-L6-v2 lands
21 dB from the IR on v68/v69 and 44 dB on v73/v79 (docs/decisions/0005-htp-arch.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qexport.errors import QExportError
from qexport.ir.graph import Graph, Node, QDType
from qexport.ir.ops import Op

HTP_ARCH = "73"

QNN_UNSUPPORTED = frozenset({Op.ERF, Op.ATTENTION})
"""IR ops whose NPU-form lowering the HTP refuses (CPU fallback needed), measured by running
every row of the op table (tests/op_cases.py) on the v73 simulator: Erf has no quantized QNN
form; a 16-bit Attention node fails to finalize (QNN_COMMON_ERROR_MEM_ALLOC). The NPU recipes
write neither (GELU becomes its tanh form, attention stays separate ops), but a graph that has
them is refused before writing."""


def signed_matmul_inputs(b: Any, graph: Graph, node: Node, xs: list[str]) -> list[str]:
    """A MatMul's 16-bit inputs, read through an int16 QuantizeLinear/DequantizeLinear pair.

    The HTP's 16x16 MatMul is inexact with uint16 inputs (zero point 32768): std 60 output steps
    on a random [128, 32] x [32, 128] product (42 dB); with int16 inputs, zero point 0, it is exact
    to 0.4 steps (v73). Other ops refuse signed 16-bit tensors (Abs, Exp, Pow, ...) and a
    Transpose cannot change the type, so the conversion is the MatMul's own (a QNN Convert).
    """
    out = list(xs)
    for i, name in enumerate(node.inputs):
        spec = graph.quant.get(name)
        if spec is not None and spec.dtype is QDType.INT16 and spec.axis is None:
            out[i] = b.signed_view(xs[i], spec)
    return out


def htp_session(path: Path, *, strict: bool = True, arch: str = HTP_ARCH, log_level: int = 3) -> Any:
    """An InferenceSession on the HTP backend compiled for Hexagon ``arch``; ``strict``: no node
    may fall back to the CPU."""
    import onnxruntime as ort

    try:
        import onnxruntime_qnn as qnn
    except ImportError:
        raise QExportError("the HTP backend needs onnxruntime-qnn (pip install onnxruntime-qnn)") from None
    if qnn.EP_NAME not in {d.ep_name for d in ort.get_ep_devices()}:
        ort.register_execution_provider_library(qnn.EP_NAME, qnn.get_library_path())
    devices = [d for d in ort.get_ep_devices() if d.ep_name == qnn.EP_NAME]
    options = ort.SessionOptions()
    options.log_severity_level = log_level
    if strict:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.add_provider_for_devices(devices, {"backend_path": qnn.get_qnn_htp_path(), "htp_arch": arch})
    return ort.InferenceSession(str(path), options)
