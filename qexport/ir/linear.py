"""Which arithmetic a Linear node means: the one classification every consumer asks.

The IR's Linear ``y = x · Wᵀ + b`` has four meanings, decided by the QuantSpecs on its input,
weight and bias alone. The reference executor simulates each one exactly; each backend maps
each one onto its runtime's kernels (or declares which it cannot run on integers). Asking
:func:`classify` instead of re-deriving the rule keeps those five places in agreement.

- ``FLOAT``: the weight is not quantized — a float matmul.
- ``STATIC``: a static per-tensor input spec (8 or 16 bits) and int8 (or int4) weights, per
  output channel (axis 0) or per tensor. Integer kernels sum ``(q_x - z_x) · q_w`` exactly in int32
  and scale once: ``y = (acc + q_b) · s_x·s_w`` with an int32 bias of scale ``s_x·s_w``, else
  ``acc · s_x·s_w + b``.
- ``STEPS``: the input is quantized at run time per row by XNNPACK's asymmetric rule
  (``dynamic``, ``symmetric=False``) and the weights are symmetric int8: the GEMM sums the
  integer steps ``q - z`` by ``q_w``, then ``· row scale · s_w + b``, each rounded once.
- ``FAKE_QUANT``: any other quantized weight (weight-only, int4 blocks, symmetric run-time or
  per-channel input): the float matmul of the fake-quantized values, as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from qexport.ir.graph import Graph, Node, QuantSpec


class LinearForm(StrEnum):
    FLOAT = "float"
    STATIC = "static"
    STEPS = "steps"
    FAKE_QUANT = "fake-quant"


@dataclass(frozen=True)
class LinearInfo:
    """A Linear node's form and the specs that decide it."""

    form: LinearForm
    x_spec: QuantSpec | None
    w_spec: QuantSpec | None
    b_spec: QuantSpec | None
    out_spec: QuantSpec | None

    @property
    def eight_bit_input(self) -> bool:
        """The static input is 8-bit (what int8 GEMM kernels take; 16-bit needs 16x8 kernels)."""
        return self.x_spec is not None and self.x_spec.dtype.storage in ("int8", "uint8")

    @property
    def symmetric_weight(self) -> bool:
        return self.w_spec is not None and not self.w_spec.zero_point.any()

    @property
    def integer_bias(self) -> bool:
        """The bias is int32 with scale ``s_x·s_w``, to be added to the int32 sums."""
        if self.b_spec is None or self.x_spec is None or self.w_spec is None:
            return False
        product = (self.x_spec.scale * self.w_spec.scale).astype(np.float32)
        return (
            self.b_spec.dtype.value == "int32"
            and self.b_spec.scale.tobytes() == np.broadcast_to(product, self.b_spec.scale.shape).tobytes()
        )


def classify(graph: Graph, node: Node) -> LinearInfo:
    """The form of Linear ``node`` (see the module docstring)."""
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else ""
    x_spec, w_spec = graph.quant.get(x), graph.quant.get(w)
    info = (x_spec, w_spec, graph.quant.get(bias) if bias else None, graph.quant.get(node.outputs[0]))
    if w_spec is None:
        return LinearInfo(LinearForm.FLOAT, *info)
    # int8, or int4 held one value per int8: integers a GEMM of int8 operands sums as they are
    int8_weight = w_spec.dtype.storage == "int8" and w_spec.axis in (0, None)
    if x_spec is None or not int8_weight:
        return LinearInfo(LinearForm.FAKE_QUANT, *info)
    if not x_spec.dynamic and x_spec.axis is None:
        return LinearInfo(LinearForm.STATIC, *info)
    if x_spec.dynamic and not x_spec.symmetric and not w_spec.zero_point.any():
        return LinearInfo(LinearForm.STEPS, *info)
    return LinearInfo(LinearForm.FAKE_QUANT, *info)
