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


def grouped_activation_spec(lo: np.ndarray, hi: np.ndarray, dtype: QDType, max_fraction: float) -> QuantSpec:
    """Per-tensor params, or two groups when a few outlier channels would stretch the range.

    Channels are ranked by range width; the widest ``k`` (at most ``max_fraction`` of them) get
    their own params when that cuts the summed quantization noise (channels x scale^2) at least
    in half. The result is per-channel along the last axis with two distinct (scale, zero point)
    pairs; backends without per-channel activation kernels lower each group separately.
    """
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    n = len(lo)
    order = np.argsort(-(hi - lo), kind="stable")  # widest first
    lo_s, hi_s = lo[order], hi[order]
    head_span = np.maximum.accumulate(hi_s) - np.minimum.accumulate(lo_s)  # channels [0, k]
    tail_span = (np.maximum.accumulate(hi_s[::-1]) - np.minimum.accumulate(lo_s[::-1]))[::-1]  # [k, n)
    best_k, best_noise = 0, n * float(tail_span[0]) ** 2
    for k in range(1, max(1, int(n * max_fraction)) + 1):
        if k >= n:
            break
        noise = k * float(head_span[k - 1]) ** 2 + (n - k) * float(tail_span[k]) ** 2
        if noise < best_noise:
            best_k, best_noise = k, noise
    if best_k == 0 or best_noise > 0.5 * n * float(tail_span[0]) ** 2:
        return activation_spec(float(lo.min()), float(hi.max()), dtype)
    wide, rest = order[:best_k], order[best_k:]
    outer = activation_spec(float(lo[wide].min()), float(hi[wide].max()), dtype)
    inner = activation_spec(float(lo[rest].min()), float(hi[rest].max()), dtype)
    scale = np.full(n, inner.scale, np.float32)
    zero = np.full(n, inner.zero_point, np.int32)
    scale[wide], zero[wide] = outer.scale, outer.zero_point
    return QuantSpec(dtype, scale, zero, axis=-1)
