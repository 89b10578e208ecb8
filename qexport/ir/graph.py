"""The backend-neutral graph: ordered nodes, named values, constants, quant specs, metadata.

Invariants (checked by :func:`Graph.validate`):
- every node input is a graph input, a constant, or an earlier node's output ("" = absent);
- every value name is unique; node names are unique;
- every graph output names an existing value.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from qexport.errors import IRError
from qexport.ir.ops import DTYPES, Op
from qexport.ir.symbols import Dim

Attr = Any  # JSON-able: int, float, str, bool, None, or lists of those


class QDType(StrEnum):
    """Integer types a tensor may cross in."""

    INT8 = "int8"
    UINT8 = "uint8"
    UINT7 = "uint7"  # uint8 storage, [0, 127]: PyTorch's reduce_range activations (quantize_dynamic on x86)
    INT16 = "int16"
    INT4 = "int4"
    INT32 = "int32"  # biases only: scale = s_input * s_weight, zero point 0

    @property
    def qmin(self) -> int:
        return {"int8": -128, "uint8": 0, "uint7": 0, "int16": -32768, "int4": -8, "int32": -(2**31)}[
            self.value
        ]

    @property
    def qmax(self) -> int:
        return {"int8": 127, "uint8": 255, "uint7": 127, "int16": 32767, "int4": 7, "int32": 2**31 - 1}[
            self.value
        ]

    @property
    def storage(self) -> str:
        """numpy dtype holding the integers (int4 is stored one value per int8, uint7 per uint8)."""
        return {"int4": "int8", "uint7": "uint8"}.get(self.value, self.value)


@dataclass(frozen=True, eq=False)
class QuantSpec:
    """ "This tensor crosses in integers with these params" (QDQ semantics).

    ``q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)``;
    ``x' = (q - zero_point) * scale`` — all in float32. ``scale``/``zero_point`` are 0-d for
    per-tensor, 1-d along ``axis`` for per-channel. ``dynamic`` specs carry placeholder params
    (0-d): the params are taken at run time over the whole tensor (``axis`` None) or over
    ``axis`` only — ``axis=-1`` is per token for [..., tokens, hidden]. ``symmetric`` dynamic
    specs use scale = max|x| / qmax and zero point 0; asymmetric int8 ones use the rule of
    XNNPACK's dynamically quantized kernels (LiteRT's hybrid FULLY_CONNECTED), so that file
    computes what the IR says; asymmetric uint7 ones PyTorch's (``quantize_dynamic`` on x86,
    fbgemm with reduce_range) — see ``qexport.ir.arith.dynamic_params`` and docs/ir.md.
    """

    dtype: QDType
    scale: np.ndarray  # float32, shape () or (C,)
    zero_point: np.ndarray  # int32, same shape as scale
    axis: int | None = None
    dynamic: bool = False
    symmetric: bool = True  # dynamic specs only; static specs carry their zero points

    def __post_init__(self) -> None:
        if self.scale.dtype != np.float32 or self.zero_point.dtype != np.int32:
            raise IRError("QuantSpec scale must be float32 and zero_point int32")
        if self.scale.shape != self.zero_point.shape or self.scale.ndim > 1:
            raise IRError("QuantSpec scale and zero_point must share a shape of rank <= 1")
        if not self.dynamic and (self.scale.ndim == 1) != (self.axis is not None):
            raise IRError("QuantSpec: per-channel params need an axis, per-tensor none")
        if not self.dynamic and not np.all(np.isfinite(self.scale) & (self.scale > 0)):
            raise IRError("QuantSpec scales must be finite and > 0")
        if not self.symmetric and not (self.dynamic and self.dtype in (QDType.INT8, QDType.UINT7)):
            raise IRError(
                "QuantSpec: only dynamic int8 and uint7 specs may be asymmetric (static ones carry zero points)"
            )
        if self.dynamic and self.dtype is QDType.UINT7 and self.symmetric:
            raise IRError("QuantSpec: dynamic uint7 specs are asymmetric (PyTorch's rule)")


@dataclass(frozen=True)
class ValueInfo:
    """dtype and (possibly symbolic) shape of a named tensor."""

    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise IRError(f"unknown dtype {self.dtype!r}; known: {sorted(DTYPES)}")


@dataclass
class Node:
    """One op application. ``name`` is stable and derived from the torch module path."""

    name: str
    op: Op
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Attr] = field(default_factory=dict)


@dataclass
class Graph:
    """A whole model. ``outputs`` maps the model's output names to value names."""

    inputs: dict[str, ValueInfo]
    outputs: dict[str, str]
    nodes: list[Node]
    constants: dict[str, np.ndarray]
    values: dict[str, ValueInfo]
    quant: dict[str, QuantSpec] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise IRError when an invariant does not hold."""
        known: set[str] = set(self.inputs) | set(self.constants)
        if len(known) != len(self.inputs) + len(self.constants):
            raise IRError("a graph input and a constant share a name")
        node_names: set[str] = set()
        for node in self.nodes:
            if node.name in node_names:
                raise IRError(f"duplicate node name {node.name!r}")
            node_names.add(node.name)
            for name in node.inputs:
                if name and name not in known:
                    raise IRError(f"node {node.name!r} reads {name!r}, which is not defined before it")
            for name in node.outputs:
                if name in known:
                    raise IRError(f"value {name!r} is defined twice (node {node.name!r})")
                if name not in self.values:
                    raise IRError(f"value {name!r} of node {node.name!r} has no ValueInfo")
                known.add(name)
        for out, value in self.outputs.items():
            if value not in known:
                raise IRError(f"graph output {out!r} names unknown value {value!r}")
        for name in self.quant:
            if name not in known:
                raise IRError(f"QuantSpec on unknown value {name!r}")

    def producer(self) -> dict[str, Node]:
        """Map value name -> the node that produces it."""
        return {out: node for node in self.nodes for out in node.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        """Map value name -> nodes that read it, in graph order."""
        result: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    result.setdefault(name, []).append(node)
        return result

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise IRError(f"no node named {name!r}")


def copy_graph(graph: Graph) -> Graph:
    """A copy whose structure can be edited; constant arrays are shared, not copied (the engine
    replaces constants, it never writes into one), so quantizing costs no extra model copy."""
    return Graph(
        inputs=dict(graph.inputs),
        outputs=dict(graph.outputs),
        nodes=[
            Node(n.name, n.op, list(n.inputs), list(n.outputs), copy.deepcopy(n.attrs)) for n in graph.nodes
        ],
        constants=dict(graph.constants),
        values=dict(graph.values),
        quant=dict(graph.quant),
        metadata=copy.deepcopy(graph.metadata),
    )
