"""Parity metrics between a candidate and a reference output (numpy only).

Per-sample cosine and SQNR are computed over real tokens only: for an output shaped
[batch, seq, ...] positions whose attention_mask is 0 are excluded (their values are
meaningless and excluded by every pooling).
"""

from __future__ import annotations

import numpy as np


def _rows(x: np.ndarray, mask: np.ndarray | None) -> list[np.ndarray]:
    """One flat float64 vector per sample, padded token positions dropped."""
    x = x.astype(np.float64)
    if mask is not None and x.ndim >= 3 and x.shape[:2] == mask.shape:
        return [x[i][mask[i] != 0].ravel() for i in range(x.shape[0])]
    return [x[i].ravel() for i in range(x.shape[0])]


def compare(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None, logits: bool = False) -> dict:
    """cos_mean, cos_min, sqnr_db, max_abs (and top1_agreement for logits)."""
    if ours.shape != ref.shape:
        raise ValueError(f"shape {ours.shape} vs reference {ref.shape}")
    a_rows, r_rows = _rows(ours, mask), _rows(ref, mask)
    cos = [
        float(a @ r / (np.linalg.norm(a) * np.linalg.norm(r) or 1.0))
        for a, r in zip(a_rows, r_rows, strict=True)
    ]
    a, r = np.concatenate(a_rows), np.concatenate(r_rows)
    noise = float(np.sum((a - r) ** 2))
    sqnr = 10 * np.log10(float(np.sum(r**2)) / noise) if noise > 0 else float("inf")
    result = {
        "cos_mean": float(np.mean(cos)),
        "cos_min": float(np.min(cos)),
        "sqnr_db": float(sqnr),
        "max_abs": float(np.max(np.abs(a - r))) if a.size else 0.0,
    }
    if logits:
        result["top1_agreement"] = float(np.mean(np.argmax(ours, -1) == np.argmax(ref, -1)))
    if not np.all(np.isfinite(ours)):
        result["nonfinite"] = int(np.size(ours) - np.count_nonzero(np.isfinite(ours)))
    return result
