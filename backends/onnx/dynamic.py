"""Run-time (dynamic) quantization of an activation, emitted as ONNX float ops that compute the
IR's rules (``qexport.ir.arith.dynamic_params``) bit for bit (tests/test_ops.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from qexport.ir.graph import QDType, QuantSpec


def dynamic_fake_quant(b: Any, out: str, produced: str, spec: QuantSpec) -> None:
    """Run-time quantization (per token for axis=-1) expressed in float ops."""
    if not spec.symmetric:
        _asymmetric_dynamic_fake_quant(b, out, produced, spec)
        return
    qmax = np.float32(spec.dtype.qmax)
    axes = b.const(np.array([spec.axis if spec.axis is not None else 0], np.int64))
    absx = b.node("Abs", [produced], f"{out}_abs")
    if spec.axis is None:
        amax = b.node("ReduceMax", [absx], f"{out}_amax", keepdims=0)
    else:
        amax = b.node("ReduceMax", [absx, axes], f"{out}_amax", keepdims=1)
    scale = b.node("Div", [amax, b.const(np.array(qmax))], f"{out}_dynscale")
    positive = b.node("Greater", [amax, b.const(np.array(0, np.float32))], f"{out}_positive")
    safe = b.node("Where", [positive, scale, b.const(np.array(1, np.float32))], f"{out}_scale_safe")
    ratio = b.node("Div", [produced, safe], f"{out}_ratio")
    rounded = b.node("Round", [ratio], f"{out}_round")
    clipped = b.node("Clip", [rounded, b.const(np.array(-qmax)), b.const(np.array(qmax))], f"{out}_clip")
    b.node("Mul", [clipped, safe], out, name=f"{out}_dynamic_quant")


def _asymmetric_dynamic_fake_quant(b: Any, out: str, produced: str, spec: QuantSpec) -> None:
    """The spec's asymmetric rule (``qexport.ir.arith.dynamic_params``: XNNPACK's for int8,
    PyTorch's for uint7) in float ops."""

    def f32(value: float) -> str:
        return str(b.const(np.array(value, np.float32)))

    keep = {"keepdims": 0} if spec.axis is None else {"keepdims": 1}
    reduce_in = [produced] if spec.axis is None else [produced, b.const(np.array([spec.axis], np.int64))]
    low = b.node("ReduceMin", reduce_in, f"{out}_rmin", **keep)
    high = b.node("ReduceMax", reduce_in, f"{out}_rmax", **keep)
    low = b.node("Min", [low, f32(0.0)], f"{out}_min0")
    high = b.node("Max", [high, f32(0.0)], f"{out}_max0")
    width = b.node("Sub", [high, low], f"{out}_width")
    nonzero = b.node("Greater", [width, f32(0.0)], f"{out}_nonzero")
    if spec.dtype is QDType.UINT7:
        safe_width = b.node("Where", [nonzero, width, f32(127.0)], f"{out}_width_safe")
        scale = b.node("Div", [safe_width, f32(127.0)], f"{out}_dynscale")
        # Reciprocal, not Div(1, s): see below
        mult = b.node("Reciprocal", [scale], f"{out}_multiplier")
        shift = b.node("Div", [b.node("Neg", [low], f"{out}_neg_min"), scale], f"{out}_zp_raw")
        zp = b.node("Round", [b.node("Clip", [shift, f32(0.0), f32(127.0)], f"{out}_zp_clip")], f"{out}_zp")
    else:
        safe_width = b.node("Where", [nonzero, width, f32(1.0)], f"{out}_width_safe")
        inverse = b.node("Div", [f32(255.0), safe_width], f"{out}_m_raw")
        mult = b.node("Where", [nonzero, inverse, f32(1.0)], f"{out}_multiplier")
        low_s = b.node("Mul", [low, mult], f"{out}_min_scaled")
        high_s = b.node("Mul", [high, mult], f"{out}_max_scaled")
        from_min = b.node("Add", [f32(-128.0), low_s], f"{out}_err_min")
        from_max = b.node("Add", [f32(127.0), high_s], f"{out}_err_max")
        use_min = b.node(
            "Greater", [b.node("Add", [from_min, from_max], f"{out}_err_sum"), f32(0.0)], f"{out}_use_min"
        )
        zp_min = b.node("Sub", [f32(-128.0), low_s], f"{out}_zp_from_min")
        zp_max = b.node("Sub", [f32(127.0), high_s], f"{out}_zp_from_max")
        zp = b.node("Where", [use_min, zp_min, zp_max], f"{out}_zp_raw")
        zp = b.node("Round", [b.node("Clip", [zp, f32(-128.0), f32(127.0)], f"{out}_zp_clip")], f"{out}_zp")
        # Reciprocal, not Div(1, m): onnxruntime's DivMulFusion turns Mul(x, Div(1, m)) into
        # Div(x, m), one ulp off the rule's x * (1/m) on some rows (tests/test_dynamic_rule.py)
        scale = b.node("Reciprocal", [mult], f"{out}_dynscale")
    scaled = b.node("Round", [b.node("Mul", [produced, mult], f"{out}_scaled")], f"{out}_rounded")
    bounds = [f32(float(spec.dtype.qmin)), f32(float(spec.dtype.qmax))]
    q = b.node("Clip", [b.node("Add", [scaled, zp], f"{out}_shifted"), *bounds], f"{out}_q")
    steps = b.node("Sub", [q, zp], f"{out}_steps")
    b.cache[f"{out}:steps"] = (steps, scale)  # q - zp and the row scale, for integer Linears
    b.node("Mul", [steps, scale], out, name=f"{out}_dynamic_quant")
