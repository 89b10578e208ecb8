"""Which float ops a backend computes exactly as the IR defines them, not with its own kernel.

The IR's LayerNorm and GELU are the exact value rounded to float32 once (docs/ir.md, "Float
semantics"); every runtime's float32 kernel is off by an ulp on a third to a half of the
outputs. Where a quantizer reads the result, directly or through an elementwise op (the
smoothing Mul), an ulp can flip an integer and the layers after it grow the flip. There the
torch backend runs both in float64 and rounds once (at no measurable cost), and the ONNX
backend runs such LayerNorms in float64 when the recipe asks for ``exact_floats`` (it costs
~1.2x there; docs/decisions/0009-float64-layernorm.md). The torch backend also runs a
quantized Softmax (the full-integer recipes') in float64, as the IR computes it
(docs/backend-torch.md). Elsewhere the float32 kernels flip nothing and are cheaper.
"""

from __future__ import annotations

from qexport.ir.graph import Graph, Node
from qexport.ir.ops import Op


def quantized_next(graph: Graph, value: str, consumers: dict[str, list[Node]]) -> bool:
    """Whether a quantizer reads ``value``'s float bits: its own spec, or the spec on the output
    of a consumer that is not a Linear (the smoothing Mul, a residual Add)."""
    return value in graph.quant or any(
        c.op is not Op.LINEAR and c.outputs[0] in graph.quant for c in consumers.get(value, [])
    )


def exact_ops(graph: Graph, *, softmax: bool = False) -> dict[str, Op]:
    """Node name -> op of each LayerNorm and erf GELU (and with ``softmax``, Softmax) whose
    result is quantized next."""
    consumers = graph.consumers()
    return {
        n.name: n.op
        for n in graph.nodes
        if (
            n.op is Op.LAYER_NORM
            or (n.op is Op.GELU and n.attrs.get("approximate", "none") == "none")
            or (softmax and n.op is Op.SOFTMAX)
        )
        and quantized_next(graph, n.outputs[0], consumers)
    }
