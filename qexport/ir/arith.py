"""The one definition of quantize / dequantize used everywhere (numpy, float32 math).

Rounding is round-half-to-even (``np.rint``), matching ONNX QuantizeLinear, TFLite's
reference kernels and torch.quantize_per_tensor.
"""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import QDType, QuantSpec


def _broadcast(param: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None or param.ndim == 0:
        return param
    shape = [1] * ndim
    shape[axis] = param.shape[0]
    return param.reshape(shape)


def quantize(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """float32 -> integers in the spec's storage dtype."""
    scale = _broadcast(spec.scale, x.ndim, spec.axis)
    zero = _broadcast(spec.zero_point, x.ndim, spec.axis)
    q = np.rint(x.astype(np.float32) / scale) + zero
    return np.clip(q, spec.dtype.qmin, spec.dtype.qmax).astype(spec.dtype.storage)


def dequantize(q: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """integers -> float32, ``(q - zero_point) * scale``."""
    scale = _broadcast(spec.scale, q.ndim, spec.axis)
    zero = _broadcast(spec.zero_point, q.ndim, spec.axis)
    return ((q.astype(np.int64) - zero).astype(np.float32) * scale).astype(np.float32)


def dynamic_fake_quant(x: np.ndarray, dtype: QDType, axis: int | None) -> np.ndarray:
    """Symmetric run-time quantization: scale = max|x| / qmax over the tensor, or over
    ``axis`` only (``axis=-1`` on [..., tokens, hidden] is per token)."""
    if axis is None:
        amax = np.asarray(np.max(np.abs(x)), dtype=np.float32)
    else:
        amax = np.max(np.abs(x), axis=axis, keepdims=True).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(dtype.qmax), np.float32(1.0)).astype(np.float32)
    q = np.clip(np.rint(x / scale), -dtype.qmax, dtype.qmax)
    return (q * scale).astype(np.float32)


def dynamic_params(
    x: np.ndarray, axis: int | None, dtype: QDType = QDType.INT8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric run-time params: ``(multiplier, zero_point, scale)`` over the tensor or over
    ``axis`` (kept as a size-1 dim), all in float32. Values quantize as
    ``q = clamp(rint(x * m) + zp, qmin, qmax)`` (a multiply, not a divide) and dequantize as
    ``(q - zp) * scale``. The range is widened to include 0 either way.

    int8, XNNPACK's rule for its dynamically quantized kernels: ``m = 255 / (max - min)`` (1
    when max == min); the zero point is ``-128 - min*m`` or ``127 - max*m``, whichever side has
    the smaller error, clamped to [-128, 127] and rounded half-to-even; ``scale = 1 / m``.

    uint7, PyTorch's (fbgemm's ``ChooseQuantizationParams`` with reduce_range, what
    ``quantize_dynamic``'s Linear computes on x86): ``scale = (max - min) / 127`` (1 when
    max == min: every value is then 0), ``m = 1 / scale``, zero point ``rint(-min / scale)``
    clamped to [0, 127]. fbgemm takes the scale in float64 before rounding it to float32; here
    every step is float32, which can move the scale by an ulp (a rounding flip now and then).
    """
    keep = axis is not None
    lo = np.minimum(np.min(x, axis=axis, keepdims=keep), 0).astype(np.float32)
    hi = np.maximum(np.max(x, axis=axis, keepdims=keep), 0).astype(np.float32)
    width = (hi - lo).astype(np.float32)
    if dtype is QDType.UINT7:
        scale = np.where(width > 0, width / np.float32(127.0), np.float32(1.0)).astype(np.float32)
        multiplier = (np.float32(1.0) / scale).astype(np.float32)
        zp = np.rint(np.clip((-lo / scale).astype(np.float32), 0, 127)).astype(np.int32)
        return multiplier, zp, scale
    multiplier = np.where(width > 0, np.float32(255.0) / np.where(width > 0, width, 1), 1).astype(np.float32)
    lo_scaled, hi_scaled = (lo * multiplier).astype(np.float32), (hi * multiplier).astype(np.float32)
    from_min = (np.float32(-128.0) + lo_scaled).astype(np.float32)
    from_max = (np.float32(127.0) + hi_scaled).astype(np.float32)
    zp = np.where(from_min + from_max > 0, np.float32(-128.0) - lo_scaled, np.float32(127.0) - hi_scaled)
    zp = np.rint(np.clip(zp.astype(np.float32), -128, 127)).astype(np.int32)
    scale = (np.float32(1.0) / multiplier).astype(np.float32)
    return multiplier, zp, scale


def dynamic_quantize(
    x: np.ndarray, axis: int | None, dtype: QDType = QDType.INT8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric run-time quantization: ``(q, zero_point, scale)`` (see ``dynamic_params``)."""
    multiplier, zp, scale = dynamic_params(x, axis, dtype)
    q = np.clip(np.rint((x * multiplier).astype(np.float32)) + zp, dtype.qmin, dtype.qmax).astype(
        dtype.storage
    )
    return q, zp, scale


def fake_quant(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """dequantize(quantize(x)): what a tensor looks like after crossing in integers."""
    if spec.dynamic and spec.symmetric:
        return dynamic_fake_quant(x, spec.dtype, spec.axis)
    if spec.dynamic:
        q, zp, scale = dynamic_quantize(x.astype(np.float32), spec.axis, spec.dtype)
        return ((q.astype(np.int32) - zp).astype(np.float32) * scale).astype(np.float32)
    return dequantize(quantize(x, spec), spec)
