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


def fake_quant(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """dequantize(quantize(x)): what a tensor looks like after crossing in integers."""
    if spec.dynamic:
        return dynamic_fake_quant(x, spec.dtype, spec.axis)
    return dequantize(quantize(x, spec), spec)
