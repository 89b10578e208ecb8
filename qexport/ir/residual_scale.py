"""Residual channels scaled by powers of two: BERT's residual stream in 8 bits (docs/integer.md).

A post-LN BERT layer ends ``LayerNorm(Linear(h) + skip)``. On all-MiniLM-L6-v2 a handful of
channels of that sum (99, 223, 127, 319) reach ±220 on a few tokens, where the other channels
stay within ±12; one per-tensor int8 scale then leaves a typical value half a step, and the
8-bit model collapses. Dividing those channels by ``d`` (a power of two per channel) in the
residual stream and multiplying them back inside the LayerNorm's integer form keeps the sum's
range at the ordinary channels' without changing the function:

- the Linear's weight rows and bias are divided by ``d`` (exact in float: a power of two; its
  per-channel weight integers are unchanged);
- the skip is multiplied by ``1/d`` (a new Mul, ``<layer_norm>.scaled_skip``);
- the LayerNorm reads the scaled sum and ``d`` (``qexport.ir.integer_form``): its per-token
  peak is taken of ``|x'|·d``, and the prescaled token is ``(x'·inverse_peak)·d``.

``d`` and ``1/d`` are exact in 8 bits (powers of two from 1 to ``MAX_SCALE``); the rewrite is
exact in float.
"""

from __future__ import annotations

import numpy as np

from qexport.ir.arith import dequantize
from qexport.ir.graph import Graph, Node, ValueInfo
from qexport.ir.ops import Op

MAX_SCALE = 64
"""The largest per-channel divisor: 64 and 1/64 are exact int8 constants (scales 1 and 1/64)."""
PERCENTILE = 95.0
"""Channels whose calibrated peak exceeds this percentile of the channel peaks are divided by
the ratio, rounded to a power of two (MiniLM: up to 20 of 384 channels, divisors up to 64). On
MiniLM's npu-int8 IR (32 held-out sentences) the 80th / 95th / 99th percentile gave 8.4 / 9.6
/ 9.8 dB; 95 leaves the top 5 % to scale in narrower models too (3 of 64 channels)."""


def residual_adds(graph: Graph) -> dict[str, Node]:
    """LayerNorm name -> the ``Add(Linear, skip)`` it normalizes, where the rewrite applies (the
    Linear's weight and bias read by that Linear alone)."""
    producer, consumers = graph.producer(), graph.consumers()
    found = {}
    for node in graph.nodes:
        add = producer.get(node.inputs[0]) if node.op is Op.LAYER_NORM else None
        if add is None or add.op is not Op.ADD or len(consumers[add.outputs[0]]) != 1:
            continue
        linears = [producer[v] for v in add.inputs if v in producer and producer[v].op is Op.LINEAR]
        if len(linears) == 1 and all(
            len(consumers.get(c, [])) == 1 for c in linears[0].inputs[1:] if c in graph.constants
        ):
            found[node.name] = add
    return found


def channel_divisors(peaks: np.ndarray) -> np.ndarray:
    """Powers of two (1 to ``MAX_SCALE``) bringing each channel's peak near ``PERCENTILE``'s."""
    typical = float(np.percentile(peaks, PERCENTILE))
    ratio = np.maximum(peaks / typical, 1.0) if typical > 0 else np.ones_like(peaks)
    return np.exp2(np.clip(np.round(np.log2(ratio)), 0, np.log2(MAX_SCALE))).astype(np.float32)


def row_divisors(graph: Graph, linear: Node) -> np.ndarray | None:
    """``d`` that ``scale_residuals`` divided ``linear``'s weight rows by, or None (not scaled).

    Read back from the graph (the Add after ``linear`` reads a ``<layer_norm>.scaled_skip``), so
    it works on the quantized IR too: learning the weight integers (``qexport.quant.gptq``) must
    aim at the float weight divided the same way.
    """
    for add in graph.consumers().get(linear.outputs[0], []):
        skip = next((v for v in add.inputs if v.endswith(".scaled_skip")), None) if add.op is Op.ADD else None
        if skip is not None:
            name = skip.removesuffix(".scaled_skip") + ".channel_scale"
            d, spec = graph.constants[name], graph.quant.get(name)
            if spec is not None and np.issubdtype(d.dtype, np.integer):
                d = dequantize(d, spec)
            return d.astype(np.float32)
    return None


def scale_residuals(graph: Graph, divisors: dict[str, np.ndarray]) -> dict[str, str]:
    """Rewrite ``graph`` in place for each LayerNorm named in ``divisors`` (its ``d``); returns
    LayerNorm name -> the constant ``d`` its integer form multiplies back."""
    adds = residual_adds(graph)
    producer = graph.producer()
    scaled = {}
    for name, d in divisors.items():
        if not np.any(d > 1):
            continue
        add = adds[name]
        linear = next(producer[v] for v in add.inputs if v in producer and producer[v].op is Op.LINEAR)
        skip = next(v for v in add.inputs if v != linear.outputs[0])
        weight = linear.inputs[1]
        graph.constants[weight] = (graph.constants[weight] / d[:, None]).astype(np.float32)
        if len(linear.inputs) > 2 and linear.inputs[2]:
            graph.constants[linear.inputs[2]] = (graph.constants[linear.inputs[2]] / d).astype(np.float32)
        graph.constants[f"{name}.channel_scale"] = d
        graph.constants[f"{name}.channel_scale_inverse"] = (1 / d).astype(np.float32)
        out = f"{name}.scaled_skip"
        graph.values[out] = ValueInfo("float32", graph.values[skip].shape)
        mul = Node(out, Op.MUL, [skip, f"{name}.channel_scale_inverse"], [out])
        graph.nodes.insert(graph.nodes.index(add), mul)
        add.inputs = [out if v == skip else v for v in add.inputs]
        scaled[name] = f"{name}.channel_scale"
    graph.validate()
    return scaled
