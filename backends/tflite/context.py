"""State shared by the per-op lowerings: concrete shapes, IR value -> TFLite tensor, folding.

How IR values become TFLite tensors (docs/backend-tflite.md):
- shapes are static: ``batch`` = 1 and ``seq`` = the capture's ``--seq-len``;
- int64 values (token ids, positions) become int32 — TFLite's kernels index with int32;
- a node whose inputs are all constants is evaluated once with the reference kernels and
  stored as a constant (the position-id slice and the position-embedding lookup, the mask
  constants), so the file holds no shape arithmetic;
- a value with a static QuantSpec is produced in float as ``<name>_float``; ``QUANTIZE`` makes
  ``<name>_quantized`` (the IR's scale and zero point; uint8 specs are stored as int8 with the
  zero point shifted by -128, the same real values) and, when a float reader needs it,
  ``DEQUANTIZE`` makes ``<name>`` — exactly the IR's fake-quantized tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from qexport.backends.tflite.builder import Quant, TfliteBuilder
from qexport.errors import QExportError
from qexport.ir.arith import dequantize, fake_quant
from qexport.ir.graph import Graph, QDType, QuantSpec
from qexport.ir.symbols import resolve
from qexport.reference.kernels import KERNELS

OP = fb.BuiltinOperator
OPT = fb.BuiltinOptions


def tflite_dtype(ir_dtype: str) -> str:
    return "int32" if ir_dtype == "int64" else ir_dtype


def quant_of(spec: QuantSpec) -> tuple[str, Quant]:
    """(TFLite storage dtype, params) for an IR spec; uint8 becomes int8 with zp - 128."""
    zero = spec.zero_point.astype(np.int64)
    if spec.dtype is QDType.UINT8:
        return "int8", Quant(spec.scale, zero - 128, spec.axis or 0)
    return spec.dtype.storage, Quant(spec.scale, zero, spec.axis or 0)


def to_storage(q: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """IR integers in the TFLite storage type (uint8 shifted into int8)."""
    if spec.dtype is QDType.UINT8:
        return (q.astype(np.int16) - 128).astype(np.int8)
    return q


class Ctx:
    def __init__(self, graph: Graph, seq_len: int) -> None:
        self.graph = graph
        self.b = TfliteBuilder()
        self.dims = {"batch": 1, "seq": seq_len}
        self.folded: dict[str, np.ndarray] = {}
        self.folded_integers: dict[str, np.ndarray] = {}  # constant integer values (full-integer graphs)
        self.consumers = graph.consumers()
        self.producers = graph.producer()

    # -- shapes and folding ------------------------------------------------------------------
    def shape(self, value: str) -> tuple[int, ...]:
        if value in self.folded:
            return tuple(self.folded[value].shape)
        if value in self.graph.constants:
            return tuple(self.graph.constants[value].shape)
        info = self.graph.values.get(value) or self.graph.inputs[value]
        return resolve(info.shape, self.dims)

    def is_const(self, value: str) -> bool:
        return not value or value in self.graph.constants or value in self.folded

    def const_value(self, value: str) -> np.ndarray:
        """The float (dequantized) value of a constant, as the reference executor sees it."""
        if value in self.folded:
            return self.folded[value]
        array = self.graph.constants[value]
        spec = self.graph.quant.get(value)
        return dequantize(array, spec) if spec is not None else array

    def try_fold(self, node: Any) -> bool:
        """Evaluate ``node`` now when every input is constant; True when it was folded."""
        if not all(self.is_const(v) for v in node.inputs):
            return False
        if any(v in self.graph.quant for v in node.inputs if v in self.graph.constants):
            return False  # keep the IR's integers (e.g. the position table) in the file
        args = [self.const_value(v) if v else None for v in node.inputs]
        result = np.asarray(KERNELS[node.op](args, node.attrs, self.dims))
        spec = self.graph.quant.get(node.outputs[0])
        if spec is not None:
            if spec.dynamic:
                return False
            result = fake_quant(result, spec)
        self.folded[node.outputs[0]] = result
        return True

    # -- tensors -------------------------------------------------------------------------------
    def output(self, value: str, dtype: str | None = None) -> int:
        """The tensor a node writes for ``value`` (``<value>_float`` when it gets quantized)."""
        info = self.graph.values[value]
        spec = self.graph.quant.get(value)
        name = f"{value}_float" if spec is not None and not spec.dynamic else value
        return self.b.tensor(name, self.shape(value), dtype or tflite_dtype(info.dtype))

    def constant(self, value: str, array: np.ndarray | None = None) -> int:
        """A constant tensor for ``value`` (int64 narrowed to int32)."""
        if self.b.has(value):
            return self.b.index[value]
        data = self.const_value(value) if array is None else array
        if data.dtype == np.int64:
            data = data.astype(np.int32)
        if data.dtype == np.float64:
            data = data.astype(np.float32)
        return self.b.constant(value, data)

    def float_in(self, value: str) -> int:
        """The tensor holding ``value`` with the IR's semantics (fake-quantized if it has a spec)."""
        spec = self.graph.quant.get(value)
        if spec is not None and spec.dynamic and not self.is_const(value):
            raise QExportError(f"tflite backend: dynamically quantized {value!r} may only feed Linear layers")
        if self.b.has(value):
            return self.b.index[value]
        if self.is_const(value):
            return self.constant(value)
        if spec is None:
            raise QExportError(f"tflite backend: value {value!r} is used before it is produced")
        q = self.quantized(value)
        out = self.b.tensor(value, self.shape(value), "float32")
        self.b.op(OP.DEQUANTIZE, [q], [out], version=2 if spec.dtype is not QDType.INT16 else 3)
        return out

    def float_in_raw(self, value: str) -> int:
        """The float tensor a dynamic spec applies to (the hybrid kernel quantizes it)."""
        return self.b.index[value]

    def quantized(self, value: str) -> int:
        """The integer tensor of a statically quantized activation (QUANTIZE on first use)."""
        name = f"{value}_quantized"
        if self.b.has(name):
            return self.b.index[name]
        spec = self.graph.quant[value]
        dtype, params = quant_of(spec)
        if spec.axis is not None:
            raise QExportError(
                f"tflite backend: per-channel activation spec on {value!r} has no TFLite kernel"
            )
        src = self.b.index[f"{value}_float"]
        out = self.b.tensor(name, self.shape(value), dtype, params)
        self.b.op(OP.QUANTIZE, [src], [out], version=2 if dtype == "int16" else 1)
        return out

    def int_vector(self, base: str, values: list[int] | tuple[int, ...]) -> int:
        """A small int32 constant (shapes, perms, axes), shared between nodes by value."""
        return self.b.scalar(f"{base}", np.asarray(values, np.int32), "int32")
