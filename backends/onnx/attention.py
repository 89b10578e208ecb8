"""ONNX's ``Attention`` op (opset 23) for the IR's float attention islands (qexport/ir/attention.py).

onnxruntime computes the island in one node on the 3-D q, k, v: no [batch, heads, seq, dim]
transposes, and its softmax runs inside the kernel. Measured on MiniLM (docs/backend-onnx.md)
the outputs are bit-identical to the decomposed graph and the int8 model is ~10 % faster.
"""

from __future__ import annotations

import numpy as np

from qexport.backends.onnx.builder import OnnxBuilder
from qexport.backends.onnx.symbolic import shape_tensor
from qexport.ir.attention import AttentionMatch


def lower_attention(b: OnnxBuilder, match: AttentionMatch, out: str) -> None:
    """One ``Attention`` node writing ``out`` ([b, s, heads * dim]) from the 3-D q, k, v."""
    width = match.heads * match.head_dim
    flat = b.const(np.array([0, 0, width], np.int64))
    # Reshape to [0, 0, width] changes nothing at run time; it tells ONNX shape inference the
    # last dim, which Attention's inference needs (it infers 0 from an unknown one).
    inputs = [b.node("Reshape", [x, flat], f"{x}_bsd") for x in (match.query, match.key, match.value)]
    if match.mask is not None:
        inputs.append(_query_rows_mask(b, match))
    b.node(
        "Attention",
        inputs,
        out,
        name=f"{match.output}_attention",
        q_num_heads=match.heads,
        kv_num_heads=match.heads,
        scale=match.scale,
    )


def _query_rows_mask(b: OnnxBuilder, match: AttentionMatch) -> str:
    """The mask with one row per query: onnxruntime's CPU Attention does not broadcast a
    [b, 1, 1, s] mask over the query dim. Expanded once and shared by every layer."""
    mask = str(match.mask)
    info = b.graph.values.get(mask) or b.graph.inputs[mask]
    seq = b.graph.values[match.query].shape[1]
    if info.shape[2] != 1:
        return mask
    key = f"{mask}_query_rows"
    if key not in b.cache:
        b.cache[key] = b.node("Expand", [mask, shape_tensor(b, [1, 1, seq, 1])], key)
    return b.cache[key]
