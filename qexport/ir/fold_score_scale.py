"""Pass: fold attention's score scale into the query projection.

Captured BERT attention computes ``softmax(Q @ K^T * c + mask)`` with ``c = 1/sqrt(head_dim)``
as a separate Mul over the [batch, heads, seq, seq] scores — the largest elementwise tensor in
the model, touched once more per layer on every backend. Since ``(Q @ K^T) * c = (Q * c) @ K^T``
and ``Q = x @ W_q^T + b_q``, the scale moves into the query weights and bias once, at capture,
and the Mul disappears: every backend, float or quantized, gets the same graph. On LiteRT this
Mul was the one op by which qexport's dynamic-range MiniLM file differed from
ai-edge-quantizer's (docs/backend-tflite.md).

Numerics: the product is associated differently in float32 (``W*c`` rounded once at capture
instead of the scores rounded once per run), a ~1e-7 relative difference, far below every
parity threshold. The pass only fires when the path from the Linear to the MatMul is private
(each value read once) and the scale is a scalar float constant.
"""

from __future__ import annotations

import numpy as np

from qexport.ir.graph import Graph, Node
from qexport.ir.ops import Op

_LAYOUT = (Op.RESHAPE, Op.TRANSPOSE)  # ops that move a Linear's output without changing values


def fold_score_scale(graph: Graph) -> int:
    """Rewrite ``graph`` in place; return how many score Muls were folded."""
    folded = 0
    producer, consumers = graph.producer(), graph.consumers()
    for mul in [n for n in graph.nodes if n.op is Op.MUL]:
        match = _match(graph, mul, producer, consumers)
        if match is None:
            continue
        linear, scale, scores, const = match
        weight, bias = linear.inputs[1], linear.inputs[2] if len(linear.inputs) > 2 else ""
        graph.constants[weight] = (graph.constants[weight] * scale).astype(np.float32)
        if bias:
            graph.constants[bias] = (graph.constants[bias] * scale).astype(np.float32)
        _bypass(graph, mul, scores, const)
        producer, consumers = graph.producer(), graph.consumers()  # the graph changed
        folded += 1
    return folded


def _match(
    graph: Graph, mul: Node, producer: dict[str, Node], consumers: dict[str, list[Node]]
) -> tuple[Node, np.float32, str, str] | None:
    """The query Linear feeding ``mul``'s MatMul, the scalar scale, and ``mul``'s scores and
    constant inputs; None when the pattern does not hold."""
    if len(mul.inputs) != 2:
        return None
    scores, const = mul.inputs if mul.inputs[1] in graph.constants else mul.inputs[::-1]
    scale = graph.constants.get(const)
    if scale is None or scale.size != 1 or scale.dtype != np.float32 or len(consumers.get(const, [])) != 1:
        return None
    matmul = producer.get(scores)
    if matmul is None or matmul.op is not Op.MATMUL or not _private(graph, consumers, scores):
        return None
    value = matmul.inputs[0]
    node = producer.get(value)
    while node is not None and node.op in _LAYOUT and _private(graph, consumers, value):
        value = node.inputs[0]
        node = producer.get(value)
    if node is None or node.op is not Op.LINEAR or not _private(graph, consumers, value):
        return None
    params = [p for p in node.inputs[1:] if p]
    if any(p not in graph.constants or graph.constants[p].dtype != np.float32 for p in params):
        return None
    if any(len(consumers.get(p, [])) != 1 or p in graph.quant for p in params):
        return None
    return node, np.float32(scale.reshape(())), scores, const


def _private(graph: Graph, consumers: dict[str, list[Node]], value: str) -> bool:
    """Read by exactly one node, not a graph output and not quantized."""
    return (
        len(consumers.get(value, [])) == 1
        and value not in graph.outputs.values()
        and value not in graph.quant
    )


def _bypass(graph: Graph, mul: Node, scores: str, const: str) -> None:
    """Remove ``mul``; its readers read the scores (now already scaled) instead."""
    out = mul.outputs[0]
    for node in graph.nodes:
        node.inputs = [scores if v == out else v for v in node.inputs]
    graph.outputs = {k: (scores if v == out else v) for k, v in graph.outputs.items()}
    graph.nodes.remove(mul)
    graph.values.pop(out, None)
    graph.constants.pop(const, None)
