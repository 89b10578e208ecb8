"""From observed values to quantization parameters.

Asymmetric (uint8 / int8 activations): the range always includes 0 so that 0 is exact.
Symmetric (int16 activations, all weights): zero point 0, ``scale = max|x| / qmax``.
"""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import QDType, QuantSpec


def activation_spec(lo: float, hi: float, dtype: QDType) -> QuantSpec:
    """Per-tensor params covering [lo, hi]."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if dtype is QDType.INT16:
        amax = max(abs(lo), abs(hi)) or 1.0
        scale = np.float32(amax / dtype.qmax)
        return QuantSpec(dtype, np.array(scale, np.float32), np.array(0, np.int32))
    span = (hi - lo) or 1.0
    scale = np.float32(span / (dtype.qmax - dtype.qmin))
    zero = int(np.clip(np.rint(dtype.qmin - lo / np.float64(scale)), dtype.qmin, dtype.qmax))
    return QuantSpec(dtype, np.array(scale, np.float32), np.array(zero, np.int32))


def percentile_range(samples: np.ndarray, percentile: float) -> tuple[float, float]:
    """Clip the tails: [100-p, p] percentiles of the observed values."""
    return float(np.percentile(samples, 100.0 - percentile)), float(np.percentile(samples, percentile))


def mse_range(samples: np.ndarray, dtype: QDType, steps: int = 64) -> tuple[float, float]:
    """The [lo·t, hi·t] (t in (0, 1]) minimizing the mean squared quantization error."""
    lo, hi = float(samples.min()), float(samples.max())
    best, best_err = (lo, hi), np.inf
    for t in np.linspace(1.0 / steps, 1.0, steps):
        spec = activation_spec(lo * t, hi * t, dtype)
        q = np.clip(np.rint(samples / spec.scale) + spec.zero_point, dtype.qmin, dtype.qmax)
        err = float(np.mean(np.square((q - spec.zero_point) * spec.scale - samples)))
        if err < best_err:
            best, best_err = (lo * t, hi * t), err
    return best


def weight_spec(weight: np.ndarray, dtype: QDType) -> tuple[np.ndarray, QuantSpec]:
    """Per-output-channel (axis 0) symmetric quantization; range [-qmax, qmax] (no -128)."""
    amax = np.max(np.abs(weight.reshape(weight.shape[0], -1)), axis=1).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(dtype.qmax), np.float32(1.0)).astype(np.float32)
    spec = QuantSpec(dtype, scale, np.zeros(scale.shape, np.int32), axis=0)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    q = np.clip(np.rint(weight / scale.reshape(shape)), -dtype.qmax, dtype.qmax).astype(dtype.storage)
    return q, spec
