"""Run an IR graph in numpy: the golden model every backend is compared against.

Constants that carry a QuantSpec hold integers and are dequantized when read; activations
that carry one are fake-quantized right after they are produced (``simulate=True``).
With ``simulate=False`` the quant specs on activations are ignored (weights stay as stored).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from qexport.errors import QExportError
from qexport.ir.arith import dequantize, dynamic_quantize, fake_quant
from qexport.ir.graph import Graph, Node
from qexport.ir.inputs import complete_inputs
from qexport.ir.linear import LinearForm, classify
from qexport.ir.ops import Op
from qexport.ir.symbols import bind
from qexport.reference.kernels import KERNELS


def check_inputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Validate names/dtypes/ranks of ``inputs`` and bind the symbolic dims."""
    missing = [n for n in graph.inputs if n not in inputs]
    extra = [n for n in inputs if n not in graph.inputs]
    if missing or extra:
        raise QExportError(f"model inputs are {list(graph.inputs)}; missing {missing}, unexpected {extra}")
    declared = [(n, info.shape) for n, info in graph.inputs.items()]
    return bind(declared, {n: np.shape(a) for n, a in inputs.items()})


def run(
    graph: Graph,
    inputs: Mapping[str, np.ndarray],
    *,
    simulate: bool = True,
    keep: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """All graph outputs (by output name), plus any value named in ``keep`` (by value name).

    Inputs with a recorded default (``metadata["input_defaults"]``) may be left out.
    """
    inputs = complete_inputs(inputs, list(graph.inputs), graph.metadata.get("input_defaults", {}))
    dims = check_inputs(graph, inputs)
    env: dict[str, np.ndarray] = {}
    for name, info in graph.inputs.items():
        env[name] = np.asarray(inputs[name]).astype(info.dtype, copy=False)
    env.update(graph.constants)  # quantized constants are dequantized when read, not all at once
    keep_set = set(keep or ())
    last_use = _last_use(graph, keep_set)
    steps: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # asymmetric dynamic values: q - zp, scale
    for index, node in enumerate(graph.nodes):
        lazy = node.op is Op.GATHER and node.inputs[0] in graph.quant  # rows dequantized in _gather_rows
        args = [
            None if (lazy and k == 0) else _read(graph, env, i) if i else None
            for k, i in enumerate(node.inputs)
        ]
        try:
            if node.op is Op.GATHER and node.inputs[0] in graph.quant and node.inputs[0] in graph.constants:
                result = _gather_rows(graph, node, env)
            elif (
                simulate
                and node.op is Op.LINEAR
                and (exact := _integer_linear(graph, node, env, steps)) is not None
            ):
                result = exact
            else:
                result = KERNELS[node.op](args, node.attrs, dims)
        except QExportError:
            raise
        except (ValueError, IndexError, TypeError) as exc:
            raise QExportError(
                f"reference executor failed at node {node.name!r} ({node.op.value}): {exc}"
            ) from None
        out = node.outputs[0]
        result = np.asarray(result)
        spec = graph.quant.get(out)
        if simulate and spec is not None and spec.dynamic and not spec.symmetric:
            q, zero, scale = dynamic_quantize(result.astype(np.float32), spec.axis, spec.dtype)
            integers = q.astype(np.int32) - zero
            steps[out] = (integers, scale)
            result = (integers.astype(np.float32) * scale).astype(np.float32)
        elif simulate and spec is not None:
            result = fake_quant(result, spec)
        env[out] = result
        for name in node.inputs:
            if name and last_use.get(name) == index:
                env.pop(name, None)
                steps.pop(name, None)
    result_map = {out: env[value] for out, value in graph.outputs.items()}
    for name in keep_set:
        if name in env:
            result_map[name] = env[name]
    return result_map


def _read(graph: Graph, env: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A node input; a quantized constant is dequantized for this read only (a model's worth
    of dequantized weights never sits in memory at once)."""
    spec = graph.quant.get(name) if name in graph.constants else None
    return dequantize(env[name], spec) if spec is not None else env[name]


def _gather_rows(graph: Graph, node: Node, env: dict[str, np.ndarray]) -> np.ndarray:
    """Gather from a quantized table: pick the integer rows, then dequantize only those.
    Equal to dequantizing the whole table first (per-row or per-tensor params, elementwise)."""
    table, idx = graph.constants[node.inputs[0]], env[node.inputs[1]]
    spec = graph.quant[node.inputs[0]]
    if idx.size and (idx.min() < 0 or idx.max() >= table.shape[0]):
        raise QExportError(f"Gather index out of range [0, {table.shape[0]})")
    rows = np.take(table, idx, axis=0)
    if spec.axis is None:
        return dequantize(rows, spec)
    if spec.axis != 0:
        return np.take(dequantize(table, spec), idx, axis=0)
    scale = np.take(spec.scale, idx).reshape(idx.shape + (1,) * (table.ndim - 1))
    zero = np.take(spec.zero_point, idx).reshape(scale.shape)
    return ((rows.astype(np.int64) - zero).astype(np.float32) * scale).astype(np.float32)


def _integer_linear(
    graph: Graph, node: Node, env: dict[str, np.ndarray], steps: dict[str, tuple[np.ndarray, np.ndarray]]
) -> np.ndarray | None:
    """A Linear whose input and weight both cross in integers, accumulated exactly.

    Integer kernels (onnxruntime QGemm, TFLite FULLY_CONNECTED, torch._int_mm) sum
    ``(q_x - z_x) · q_w`` exactly in int32 and scale once; a float32 matmul of the dequantized
    values rounds every partial sum, which flips the rounding of a later quantizer now and
    then. So the golden model sums the same integers (in float64: exact below 2**53) and
    applies ``(acc + q_bias) · s_x·s_w`` once. Returns None when the Linear is not integer.
    """
    info = classify(graph, node)
    x_spec, w_spec = info.x_spec, info.w_spec
    if x_spec is None or w_spec is None:
        return None
    if info.form is LinearForm.STEPS and node.inputs[0] in steps:  # as XNNPACK's qd8 GEMM computes it
        integers, row_scale = steps[node.inputs[0]]
        acc = (integers.astype(np.float64) @ graph.constants[node.inputs[1]].astype(np.float64).T).astype(
            np.float32
        )
        y = ((acc * row_scale).astype(np.float32) * w_spec.scale).astype(np.float32)
        bias = node.inputs[2] if len(node.inputs) > 2 else ""
        return (y + _read(graph, env, bias)).astype(np.float32) if bias else y
    if info.form is not LinearForm.STATIC:
        return None
    x = env[node.inputs[0]]
    shifted = np.rint(x / x_spec.scale).astype(np.float64)  # q - z, recovered exactly
    acc = shifted @ graph.constants[node.inputs[1]].astype(np.float64).T
    scale = (x_spec.scale * w_spec.scale).astype(np.float32)
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    b_spec = info.b_spec
    if b_spec is not None and b_spec.dtype.value == "int32":
        return ((acc + graph.constants[bias]) * b_spec.scale.astype(np.float64)).astype(np.float32)
    y = (acc * scale.astype(np.float64)).astype(np.float32)
    return y + env[bias] if bias else y


def _last_use(graph: Graph, keep: set[str]) -> dict[str, int]:
    """Index of the last node reading each value, so memory is freed as we go."""
    pinned = set(graph.outputs.values()) | keep | set(graph.constants) | set(graph.inputs)
    last: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name and name not in pinned:
                last[name] = index
    return last
