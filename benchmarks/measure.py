"""Shared measurement helpers: latency (median after warm-up), parity metrics, peak RSS."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

import numpy as np


def latency_ms(fn: Callable[[], object], runs: int = 30, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 3)


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / m.sum(1)


def parity(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    noise = np.sum((ours.astype(np.float64) - ref) ** 2)
    sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / noise) if noise else float("inf")
    return {
        "cos_mean": round(float(cos.mean()), 5),
        "cos_min": round(float(cos.min()), 5),
        "sqnr_db": round(float(sqnr), 2),
    }


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
