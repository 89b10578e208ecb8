"""Accumulates ONNX nodes and initializers while lowering; owns the QDQ naming scheme.

Names: a quantized constant ``W`` becomes initializers ``W_quantized``, ``W_scale``,
``W_zero_point`` and a DequantizeLinear producing ``W``. A quantized activation ``v`` is
produced as ``v_float``, quantized to ``v_quantized`` and dequantized back to ``v``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qexport.ir import exact_ops
from qexport.ir.graph import Graph, QuantSpec

_Q_TYPES = {
    "int8": onnx.TensorProto.INT8,
    "uint8": onnx.TensorProto.UINT8,
    "int16": onnx.TensorProto.INT16,
    "uint16": onnx.TensorProto.UINT16,
    "int32": onnx.TensorProto.INT32,
}
_UNSIGNED = {"int8": ("uint8", 128), "int16": ("uint16", 32768)}
"""A signed q with zero point z is the unsigned q + shift with zero point z + shift."""


class OnnxBuilder:
    def __init__(self, graph: Graph, integer_linears: bool = True, unsigned: bool = False) -> None:
        self.graph = graph
        self.exact = exact_ops.exact_ops(graph) if graph.metadata.get("exact_floats") else {}  # lowering
        self.integer_linears = integer_linears  # see OnnxBackend
        self.unsigned = unsigned  # per-tensor int8/int16 written as uint8/uint16 (QNN's HTP; OnnxBackend)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.cache: dict[str, str] = {}
        self._counter = 0

    def fresh(self, base: str) -> str:
        self._counter += 1
        return f"{base}.{self._counter}"

    def node(self, op: str, inputs: list[str], output: str, name: str | None = None, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=name or output, **attrs))
        return output

    def cached(self, output: str, op: str, inputs: list[str], **attrs: Any) -> str:
        """``output`` = ``op(inputs)``, written once however many nodes ask for it."""
        if output not in self.cache:
            self.cache[output] = self.node(op, inputs, output, **attrs)
        return self.cache[output]

    def initializer(self, name: str, array: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        return name

    def const(self, array: np.ndarray) -> str:
        """An anonymous constant, deduplicated by value."""
        array = np.asarray(array)
        digest = hashlib.sha256(array.tobytes()).hexdigest()  # not hash(): PYTHONHASHSEED-independent
        key = f"const.{array.dtype}.{array.shape}.{digest}"
        if key not in self.cache:
            self._counter += 1
            self.cache[key] = self.initializer(f"const.{self._counter}", array)
        return self.cache[key]

    # -- QDQ --------------------------------------------------------------
    def qparams(self, name: str, spec: QuantSpec) -> tuple[str, str]:
        """Scale and zero-point initializers, named after the quantized tensor."""
        zero = self.stored(spec.zero_point, spec)
        return (self.initializer(f"{name}_scale", spec.scale), self.initializer(f"{name}_zero_point", zero))

    def stored(self, integers: np.ndarray, spec: QuantSpec) -> np.ndarray:
        """The integers as the file stores them. With ``unsigned``, per-tensor int8/int16 are
        shifted into uint8/uint16, the same real values (``(q + s) - (z + s) = q - z``);
        per-channel weights stay signed and symmetric."""
        storage = spec.dtype.storage
        if self.unsigned and spec.axis is None and storage in _UNSIGNED:
            unsigned, shift = _UNSIGNED[storage]
            return (np.asarray(integers).astype(np.int32) + shift).astype(unsigned)
        return np.asarray(integers).astype(storage)

    def dequantized_constant(self, name: str, integers: np.ndarray, spec: QuantSpec, axis: int | None) -> str:
        """``name`` (float) = DequantizeLinear(name_quantized, name_scale, name_zero_point)."""
        if name in self.cache:
            return self.cache[name]
        q = self.initializer(f"{name}_quantized", self.stored(integers, spec))
        scale, zero = self.qparams(name, spec)
        attrs = {"axis": axis} if axis is not None else {}
        self.cache[name] = self.node(
            "DequantizeLinear", [q, scale, zero], name, name=f"{name}_dequantize", **attrs
        )
        return name

    def activation_steps(self, value: str) -> str:
        """The static activation ``value``'s integer steps ``q - z`` as float32, ``value_integers``:
        DequantizeLinear of ``value_quantized`` with scale 1 (once per value: Q, K and V share it)."""
        key = f"{value}:integers"
        if key not in self.cache:
            one = self.const(np.array(1.0, np.float32))
            self.cache[key] = self.node(
                "DequantizeLinear", [f"{value}_quantized", one, f"{value}_zero_point"], f"{value}_integers"
            )
        return self.cache[key]

    def qdq_activation(self, value: str, produced: str, spec: QuantSpec) -> None:
        """QuantizeLinear + DequantizeLinear from ``produced`` (float) to ``value``.

        Per-channel (last-axis) activations get their float ``value`` from float ops instead:
        onnxruntime's per-axis QuantizeLinear is a scalar loop (~1.1 ms per MiniLM Linear
        output, 40.8 of int8-full's ~60 ms), and ``(clip(round(x / s), qmin - zp, qmax - zp))
        · s`` is the same arithmetic, op for op (docs/backend-onnx.md). ``value_quantized``
        stays for a reader of the integers and is pruned when there is none.
        """
        scale, zero = self.qparams(value, spec)
        attrs = {"axis": spec.axis} if spec.axis is not None else {}
        q = self.node(
            "QuantizeLinear",
            [produced, scale, zero],
            f"{value}_quantized",
            name=f"{value}_quantize",
            **attrs,
        )
        if spec.axis != -1:
            self.node("DequantizeLinear", [q, scale, zero], value, name=f"{value}_dequantize", **attrs)
            return
        # The bounds are derived from the stored zero point in-graph (constant-folded at load).
        zero_float = self.node("Cast", [zero], f"{value}_zero_point_float", to=onnx.TensorProto.FLOAT)
        low = self.node("Sub", [self.const(np.float32(spec.dtype.qmin)), zero_float], f"{value}_low")
        high = self.node("Sub", [self.const(np.float32(spec.dtype.qmax)), zero_float], f"{value}_high")
        rounded = self.node(
            "Round", [self.node("Div", [produced, scale], f"{value}_divided")], f"{value}_rounded"
        )
        clipped = self.node(
            "Min", [self.node("Max", [rounded, low], f"{value}_raised"), high], f"{value}_clipped"
        )
        self.node("Mul", [clipped, scale], value, name=f"{value}_dequantize")

    def signed_view(self, value: str, spec: QuantSpec) -> str:
        """``value`` (a uint16-stored int16 tensor) re-quantized to int16, zero point 0: the
        same integers minus 32768, so the same real values (qnn.signed_matmul_inputs)."""
        name = f"{value}_signed"
        if name not in self.cache:
            scale = self.initializer(f"{value}_scale", spec.scale)
            zero = self.initializer(f"{name}_zero_point", np.asarray(spec.zero_point).astype(np.int16))
            q = self.node("QuantizeLinear", [value, scale, zero], f"{name}_quantized")
            self.cache[name] = self.node("DequantizeLinear", [q, scale, zero], name)
        return self.cache[name]

    def prune(self, outputs: set[str]) -> None:
        """Drop nodes whose results nothing reads, then initializers no node reads.

        onnxruntime runs such nodes anyway. They appear where a lowering reads a quantized
        value as integers (an exact Linear reads ``x_quantized``, not the dequantized ``x``).
        """
        while True:
            read = outputs | {name for node in self.nodes for name in node.input}
            kept = [node for node in self.nodes if any(o in read for o in node.output)]
            if len(kept) == len(self.nodes):
                break
            self.nodes = kept
        for name in [n for n in self.initializers if n not in read]:
            del self.initializers[name]
