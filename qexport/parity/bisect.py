"""Bisector: where along the graph does the error open up, and is it quantization or lowering?

Given three sets of named intermediate tensors on the same inputs — the float IR (fp32), the
IR simulation, and a backend — every shared value gets two SQNRs:
``quantization`` (fp32 vs simulation) and ``lowering`` (simulation vs backend). The verdict:
- lowering, at the first value whose lowering SQNR falls ``margin_db`` below its quantization
  SQNR and below ``floor_db`` (the backend stopped computing what the IR says);
- otherwise quantization, at the first value whose quantization SQNR falls below ``floor_db``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Point:
    value: str
    quantization_db: float
    lowering_db: float | None


def sqnr_db(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray | None) -> float:
    a, r = ours.astype(np.float64), ref.astype(np.float64)
    if mask is not None and r.ndim >= 2 and r.shape[:2] == mask.shape:
        keep = (mask != 0).reshape(mask.shape + (1,) * (r.ndim - 2))
        a, r = a * keep, r * keep
    finite = np.isfinite(r) & (np.abs(r) < 1e30)  # additive masks hold float32.min
    noise = float(np.sum(np.where(finite, a - r, 0.0) ** 2))
    signal = float(np.sum(np.where(finite, r, 0.0) ** 2))
    if not np.all(np.isfinite(a[finite])):
        return -np.inf
    if noise == 0:
        return 200.0
    return float(10 * np.log10(signal / noise)) if signal > 0 else -np.inf


def trace(
    order: Sequence[str],
    fp32: dict[str, np.ndarray],
    simulated: dict[str, np.ndarray],
    backend: dict[str, np.ndarray] | None,
    mask: np.ndarray | None,
) -> list[Point]:
    points = []
    for name in order:
        if name not in fp32 or name not in simulated or fp32[name].dtype.kind != "f":
            continue
        lowering = None
        if backend is not None and name in backend and backend[name].shape == simulated[name].shape:
            lowering = min(sqnr_db(backend[name], simulated[name], mask), 200.0)
        points.append(Point(name, min(sqnr_db(simulated[name], fp32[name], mask), 200.0), lowering))
    return points


def verdict(points: Sequence[Point], floor_db: float = 20.0, margin_db: float = 10.0) -> dict:
    for p in points:
        if (
            p.lowering_db is not None
            and p.lowering_db < floor_db
            and p.lowering_db < p.quantization_db - margin_db
        ):
            return {
                "kind": "lowering",
                "value": p.value,
                "layer": layer_of(p.value),
                "lowering_db": p.lowering_db,
                "quantization_db": p.quantization_db,
            }
    for p in points:
        if p.quantization_db < floor_db:
            return {
                "kind": "quantization",
                "value": p.value,
                "layer": layer_of(p.value),
                "lowering_db": p.lowering_db,
                "quantization_db": p.quantization_db,
            }
    return {"kind": "none", "value": None, "layer": None}


def layer_of(value: str) -> str:
    """``encoder.layer.3.output.dense`` -> ``encoder.layer.3``; else the first path part."""
    match = re.match(r"^(.*?\.layers?\.\d+)", value)
    return match.group(1) if match else value.split(".")[0]


def plot(points: Sequence[Point], title: str, path: str) -> None:
    """Per-value SQNR along the graph: quantization and lowering, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = range(len(points))
    fig, ax = plt.subplots(figsize=(11, 4), dpi=100)
    ax.plot(xs, [p.quantization_db for p in points], label="quantization (fp32 vs IR simulation)")
    low = [p.lowering_db if p.lowering_db is not None else np.nan for p in points]
    ax.plot(xs, low, label="lowering (IR simulation vs backend)")
    ticks = [i for i, p in enumerate(points) if i == 0 or layer_of(p.value) != layer_of(points[i - 1].value)]
    ax.set_xticks(ticks, [layer_of(points[i].value) for i in ticks], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("SQNR dB")
    ax.set_ylim(bottom=min(-5.0, np.nanmin([p.quantization_db for p in points] + low) - 2), top=130)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
