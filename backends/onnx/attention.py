"""ONNX's ``Attention`` op (opset 23) for the IR's ``Attention`` node (made by qexport/ir/attention.py).

onnxruntime computes the island in one node on the 3-D q, k, v: no [batch, heads, seq, dim]
transposes, and its softmax runs inside the kernel. Measured on MiniLM (docs/backend-onnx.md)
the outputs are bit-identical to the decomposed graph and the int8 model is ~10 % faster.
"""

from __future__ import annotations

import numpy as np

from qexport.backends.onnx.builder import OnnxBuilder
from qexport.backends.onnx.symbolic import shape_tensor
from qexport.ir.graph import Node


def lower_attention(b: OnnxBuilder, node: Node, xs: list[str], out: str) -> None:
    """One ``Attention`` node writing ``out`` ([b, s, heads * dim]) from the 3-D q, k, v."""
    heads, dim = int(node.attrs["heads"]), int(node.attrs["head_dim"])
    flat = b.const(np.array([0, 0, heads * dim], np.int64))
    # Reshape to [0, 0, width] changes nothing at run time; it tells ONNX shape inference the
    # last dim, which Attention's inference needs (it infers 0 from an unknown one).
    inputs = [b.node("Reshape", [x, flat], f"{x}_bsd") for x in xs[:3]]
    if len(node.inputs) > 3:
        inputs.append(_query_rows_mask(b, node.inputs[3], node.inputs[0]))
    b.node(
        "Attention",
        inputs,
        out,
        name=node.name,
        q_num_heads=heads,
        kv_num_heads=heads,
        scale=float(node.attrs["scale"]),
    )


def _query_rows_mask(b: OnnxBuilder, mask: str, query: str) -> str:
    """The mask as onnxruntime's CPU Attention needs it, made once and shared by every layer.

    - Floored at -1e30: with float32.min in the mask, a row whose keys are all masked comes out
      neither uniform nor unmasked (measured on onnxruntime 1.31; -1e9 and -1e30 give the uniform
      softmax that the separate ops, torch and the IR give). Anywhere a row has a real key,
      exp(-1e30 + s - max) and exp(float32.min + s - max) are both exactly 0: same outputs.
    - One row per query: the kernel does not broadcast a [b, 1, 1, s] mask over the query dim.
    """
    key = f"{mask}_attention"
    if key in b.cache:
        return b.cache[key]
    info = b.graph.values.get(mask) or b.graph.inputs[mask]
    floored = b.node("Max", [mask, b.const(np.array(-1e30, np.float32))], f"{mask}_floored")
    if info.shape[2] == 1:
        seq = b.graph.values[query].shape[1]
        floored = b.node("Expand", [floored, shape_tensor(b, [1, 1, seq, 1])], f"{mask}_query_rows")
    b.cache[key] = floored
    return floored
