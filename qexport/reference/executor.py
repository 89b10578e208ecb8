"""Run an IR graph in numpy: the golden model every backend is compared against.

Constants that carry a QuantSpec hold integers and are dequantized when read; activations
that carry one are fake-quantized right after they are produced (``simulate=True``).
With ``simulate=False`` the quant specs on activations are ignored (weights stay as stored).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from qexport.errors import QExportError
from qexport.ir.graph import Graph
from qexport.ir.symbols import bind
from qexport.quant.arith import dequantize, fake_quant
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
    """All graph outputs (by output name), plus any value named in ``keep`` (by value name)."""
    dims = check_inputs(graph, inputs)
    env: dict[str, np.ndarray] = {}
    for name, info in graph.inputs.items():
        env[name] = np.asarray(inputs[name]).astype(info.dtype, copy=False)
    for name, array in graph.constants.items():
        spec = graph.quant.get(name)
        env[name] = dequantize(array, spec) if spec is not None else array
    keep_set = set(keep or ())
    last_use = _last_use(graph, keep_set)
    for index, node in enumerate(graph.nodes):
        args = [env[i] if i else None for i in node.inputs]
        try:
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
        if simulate and spec is not None:
            result = fake_quant(result, spec)
        env[out] = result
        for name in node.inputs:
            if name and last_use.get(name) == index:
                env.pop(name, None)
    result_map = {out: env[value] for out, value in graph.outputs.items()}
    for name in keep_set:
        if name in env:
            result_map[name] = env[name]
    return result_map


def _last_use(graph: Graph, keep: set[str]) -> dict[str, int]:
    """Index of the last node reading each value, so memory is freed as we go."""
    pinned = set(graph.outputs.values()) | keep | set(graph.constants) | set(graph.inputs)
    last: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name and name not in pinned:
                last[name] = index
    return last
