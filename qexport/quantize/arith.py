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


def dynamic_spec(x: np.ndarray, dtype: QDType, axis: int | None) -> QuantSpec:
    """Symmetric params taken from the tensor itself (per tensor, or per slice along ``axis``)."""
    if axis is None:
        amax = np.asarray(np.max(np.abs(x)), dtype=np.float32)
    else:
        other = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
        amax = np.max(np.abs(x), axis=other).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(dtype.qmax), np.float32(1.0)).astype(np.float32)
    return QuantSpec(dtype, scale, np.zeros(scale.shape, np.int32), None if axis is None else axis % x.ndim)


def fake_quant(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """dequantize(quantize(x)): what a tensor looks like after crossing in integers."""
    if spec.dynamic:
        spec = dynamic_spec(x, spec.dtype, spec.axis)
    return dequantize(quantize(x, spec), spec)
