"""Learn a static recipe's smoothing scales and activation ranges by distillation.

The float model is the teacher: on the calibration samples, the quantized graph (run in torch
with straight-through rounding, ``LearnableGraph``) is pulled towards the float graph's outputs
and towards every LayerNorm output (the residual stream after each sub-layer), each term an
energy-normalized squared error over the tokens the attention mask keeps. Adam, a cosine
schedule, batches of 8 samples in a fixed order drawn from the seed: the same input, recipe and
seed give the same params.

The params are then written back through the engine's own rules (``activation_spec``,
``weight_spec``, ``integer_bias``), so the result is an IR of the same recipe.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from qexport.ir.graph import Graph, QDType, copy_graph
from qexport.ir.ops import Op
from qexport.learn.graph import LearnableGraph
from qexport.quant.calibration import CalibrationSet
from qexport.quant.engine import integer_bias
from qexport.quant.gptq import calibration_batches
from qexport.quant.ranges import activation_spec, weight_spec

Progress = Callable[[int, int], None]
BATCH = 8
LR_SMOOTH = 1e-3  # on log s: measured on MiniLM, 1e-3 for both beat 3e-4 and 3e-3
LR_RANGE = 1e-3


def _targets(graph: Graph, quantized: Graph) -> list[str]:
    """Float values matched to the teacher: LayerNorm outputs present in both graphs."""
    mine = {n.outputs[0] for n in quantized.nodes}
    return [
        n.outputs[0]
        for n in graph.nodes
        if n.op is Op.LAYER_NORM and n.outputs[0] in mine and n.outputs[0] not in graph.outputs.values()
    ]


def distill_loss(
    student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], mask: torch.Tensor | None
) -> torch.Tensor:
    total = torch.zeros(())
    for name, ref in teacher.items():
        if not ref.is_floating_point():
            continue
        diff = (student[name] - ref) ** 2
        energy = ref**2
        if mask is not None and ref.ndim >= 2 and tuple(ref.shape[:2]) == tuple(mask.shape):
            keep = mask.reshape(tuple(mask.shape) + (1,) * (ref.ndim - 2))
            diff, energy = diff * keep, energy * keep
        total = total + diff.sum() / energy.sum().clamp_min(1e-30)
    return total


def ordered_by_length(calib: CalibrationSet) -> CalibrationSet:
    """The samples sorted by their attention mask's length (stable), so a batch pads little."""
    if "attention_mask" not in calib.inputs:
        return calib
    order = np.argsort(calib.inputs["attention_mask"].sum(1), kind="stable")
    return CalibrationSet({k: v[order] for k, v in calib.inputs.items()}, calib.origin)


def learn_static(
    float_graph: Graph,
    quantized: Graph,
    calib: CalibrationSet,
    *,
    epochs: int,
    seed: int,
    progress: Progress | None = None,
) -> tuple[Graph, dict[str, float | str]]:
    """``quantized`` with learned smoothing scales and activation ranges, and the calibration loss
    before and after; when learning did not lower that loss, ``quantized`` itself (``kept``)."""
    torch.manual_seed(seed)
    student = LearnableGraph(float_graph, quantized)
    teacher = LearnableGraph(float_graph, float_graph)
    targets = _targets(float_graph, quantized)
    data = []
    with torch.no_grad():
        for batch in calibration_batches(float_graph, ordered_by_length(calib), BATCH):
            inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
            mask = inputs["attention_mask"].float() if "attention_mask" in inputs else None
            data.append((inputs, mask, teacher(inputs, keep=targets)))
    groups = [
        {"params": list(student.smooth.values()), "lr": LR_SMOOTH},
        {"params": list(student.ranges.values()), "lr": LR_RANGE},
    ]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]])
    steps = max(1, epochs * len(data))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    rng = np.random.default_rng(seed)

    def measured() -> float:
        with torch.no_grad():
            return sum(float(distill_loss(student(x, keep=targets), ref, m)) for x, m, ref in data) / len(
                data
            )

    before = measured()
    for epoch in range(epochs):
        for index in rng.permutation(len(data)):
            inputs, mask, reference = data[index]
            loss = distill_loss(student(inputs, keep=targets), reference, mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if progress:
            progress(epoch + 1, epochs)
    after = measured()
    losses: dict[str, float | str] = {"loss_before": round(before, 6), "loss_after": round(after, 6)}
    if not after < before:  # never hand back params worse on the calibration data than the start
        return quantized, {**losses, "kept": "initial"}
    return _write_back(float_graph, quantized, student), dict(losses)


def _write_back(float_graph: Graph, quantized: Graph, student: LearnableGraph) -> Graph:
    """The learned params as an IR: new inv_smooth constants, activation specs, weights, biases."""
    out = copy_graph(quantized)
    with torch.no_grad():
        for name in list(out.constants):
            if name in student._keys and student._keys[name] in student.smooth:
                out.constants[name] = student.inv_smooth(name).numpy().astype(np.float32)
        for name, dtype in student.range_dtypes.items():
            out.quant[name] = activation_spec(*student.activation_range(name), dtype)
    for node in out.nodes:
        if node.op is not Op.LINEAR or node.inputs[1] not in student.weights:
            continue
        weight, inv = student.weights[node.inputs[1]]
        w = weight.numpy()
        if inv is not None:
            w = (w * (np.float32(1.0) / out.constants[inv])[None, :]).astype(np.float32)
        old = quantized.quant[node.inputs[1]]
        out.constants[node.inputs[1]], out.quant[node.inputs[1]] = weight_spec(w, QDType(old.dtype))
        bias = node.inputs[2] if len(node.inputs) > 2 else ""
        b_spec = quantized.quant.get(bias) if bias else None
        if b_spec is not None and b_spec.dtype is QDType.INT32 and node.inputs[0] in out.quant:
            out.constants[bias], out.quant[bias] = integer_bias(
                float_graph.constants[bias], out.quant[node.inputs[0]], out.quant[node.inputs[1]]
            )
    out.validate()
    return out
