"""Learned rounding of int8 Linear weights (GPTQ): each weight column is rounded in turn and
the error it leaves is spread over the columns not yet rounded, weighted by how the Linear's
inputs correlate on the calibration data (the Hessian ``XᵀX`` of ``‖W·X - Q·X‖²``).

Only the integers change: every weight keeps the scale its recipe gave it (per output channel,
symmetric, [-qmax, qmax]), so the IR is one of the same recipe and every backend lowers it as
before. numpy only; see docs/learning.md for what it measures on MiniLM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from qexport.ir.graph import Graph, Node, copy_graph
from qexport.ir.ops import Op
from qexport.ir.residual_scale import row_divisors
from qexport.quant.calibration import CalibrationSet

DAMP = 0.1  # fraction of the mean diagonal added to XᵀX: measured on MiniLM, 0.1 beat 0.01 by 0.1 dB
Progress = Callable[[int, int], None]


def calibration_batches(graph: Graph, calib: CalibrationSet, size: int) -> Iterator[dict[str, np.ndarray]]:
    """The calibration samples in batches of ``size``; padding beyond the longest sample of a
    batch is cut off when the graph's sequence dim is symbolic (an attention mask says where)."""
    mask = calib.inputs.get("attention_mask")
    symbolic = all(isinstance(info.shape[-1], str) for info in graph.inputs.values() if info.shape)
    for start in range(0, calib.size, size):
        batch = {k: v[start : start + size] for k, v in calib.inputs.items()}
        if mask is not None and symbolic:
            length = max(1, int(batch["attention_mask"].sum(1).max()))
            batch = {k: v[:, :length] if v.ndim >= 2 else v for k, v in batch.items()}
        yield batch


def rounded_linears(graph: Graph) -> list[Node]:
    """Linears whose weight is per-output-channel symmetric int8 (what GPTQ rounds)."""
    found = []
    for node in graph.nodes:
        spec = graph.quant.get(node.inputs[1]) if node.op is Op.LINEAR else None
        if (
            spec is not None
            and node.inputs[1] in graph.constants
            and spec.dtype.value == "int8"
            and spec.axis == 0
            and not spec.zero_point.any()
        ):
            found.append(node)
    return found


def smoothed_weight(float_graph: Graph, quantized: Graph, node: Node) -> np.ndarray:
    """The float weight ``quantized`` rounds for Linear ``node``: the float model's weight,
    times the smoothing scale of the Mul feeding the Linear, if there is one, and with its rows
    divided by the residual channel scale of the sum it feeds, if there is one (npu-int8)."""
    weight = float_graph.constants[node.inputs[1]].astype(np.float32)
    divisors = row_divisors(quantized, node)
    if divisors is not None:
        weight = (weight / divisors[:, None]).astype(np.float32)
    producer = quantized.producer().get(node.inputs[0])
    if producer is not None and producer.op is Op.MUL and producer.inputs[1].endswith(".inv_smooth"):
        scale = (np.float32(1.0) / quantized.constants[producer.inputs[1]]).astype(np.float32)
        weight = (weight * scale[None, :]).astype(np.float32)
    return weight


def input_hessians(
    graph: Graph, calib: CalibrationSet, names: list[str], batch: int = 32
) -> dict[str, np.ndarray]:
    """``XᵀX`` (float64) of each named value over the calibration tokens the mask keeps, with the
    graph's own quantization simulated upstream (what the Linear will really read)."""
    from qexport.reference.executor import run

    hessians: dict[str, np.ndarray] = {}
    for inputs in calibration_batches(graph, calib, batch):
        values = run(graph, inputs, keep=names)
        mask = inputs.get("attention_mask")
        for name in names:
            x = np.asarray(values[name])
            if mask is not None and x.ndim == 3 and x.shape[:2] == mask.shape:
                x = x[mask != 0]
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            hessians[name] = hessians.get(name, 0) + x.T @ x
    return hessians


def round_weight(weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """GPTQ: int8 ``q`` (rows scaled by ``scale``) minimizing ``‖(W - q·s)·X‖²`` greedily, column
    by column in input order, with the inverse Hessian's Cholesky factor."""
    w = weight.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0  # an input channel the data never used: its weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices_from(h)] += DAMP * float(np.mean(np.diag(h)))
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    s = scale.astype(np.float64)
    q = np.zeros(w.shape, np.int8)
    for i in range(w.shape[1]):
        column = np.clip(np.rint(w[:, i] / s), -qmax, qmax)
        q[:, i] = column
        error = (w[:, i] - column * s) / upper[i, i]
        w[:, i + 1 :] -= np.outer(error, upper[i, i + 1 :])
    return q


def learn_rounding(
    float_graph: Graph, quantized: Graph, calib: CalibrationSet, progress: Progress | None = None
) -> Graph:
    """``quantized`` with every int8 Linear weight rounded by GPTQ (scales unchanged)."""
    out = copy_graph(quantized)
    linears = [n for n in rounded_linears(quantized) if n.inputs[1] in float_graph.constants]
    hessians = input_hessians(quantized, calib, sorted({n.inputs[0] for n in linears}))
    for index, node in enumerate(linears):
        spec = quantized.quant[node.inputs[1]]
        weight = smoothed_weight(float_graph, quantized, node)
        out.constants[node.inputs[1]] = round_weight(
            weight, hessians[node.inputs[0]], spec.scale, spec.dtype.qmax
        )
        if progress:
            progress(index + 1, len(linears))
    return out
