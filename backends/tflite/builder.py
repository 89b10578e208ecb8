"""Accumulate TFLite tensors, buffers and operators; serialize with the schema LiteRT ships.

The flatbuffer is written through ``ai_edge_litert.schema_py_generated`` (object API + Pack), so
no TensorFlow is needed at export time and the bytes depend only on the graph: tensors, buffers
and operator codes are numbered in the order the lowering asks for them.

Rules the runtime relies on (learned the hard way, see docs/backend-tflite.md):
- buffer 0 is the empty sentinel; every constant gets its own buffer, 16-byte aligned;
- constants are handed over as numpy arrays (Python lists cost ~1.3 s per MB in Pack);
- a quantized tensor carries ``scale``/``zeroPoint`` lists (one entry per channel when
  per-channel, with ``quantizedDimension``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb

TENSOR_TYPES: dict[str, int] = {
    "float32": fb.TensorType.FLOAT32,
    "int64": fb.TensorType.INT64,
    "int32": fb.TensorType.INT32,
    "int16": fb.TensorType.INT16,
    "int8": fb.TensorType.INT8,
    "uint8": fb.TensorType.UINT8,
    "bool": fb.TensorType.BOOL,
}
FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3


@dataclass(frozen=True)
class Quant:
    """Affine quantization of one tensor: per-tensor when ``scale`` is 0-d."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0

    def to_fb(self) -> Any:
        q = fb.QuantizationParametersT()
        q.scale = [float(v) for v in np.asarray(self.scale, np.float32).ravel()]
        q.zeroPoint = [int(v) for v in np.asarray(self.zero_point, np.int64).ravel()]
        q.quantizedDimension = int(self.axis)
        return q


class _AlignedBuffer(fb.BufferT):  # type: ignore[misc]
    """A BufferT whose bytes start on a 16-byte boundary (SIMD kernels read weights in place)."""

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data = None
        if self.data is not None:
            payload = self.data.tobytes()
            builder.StartVector(1, len(payload), 16)
            builder.head -= len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            data = builder.EndVector()
        fb.BufferStart(builder)
        if data is not None:
            fb.BufferAddData(builder, data)
        return int(fb.BufferEnd(builder))


class TfliteBuilder:
    """Tensors, buffers and operators of one subgraph, numbered in creation order."""

    def __init__(self) -> None:
        self.buffers: list[fb.BufferT] = [fb.BufferT()]  # buffer 0: empty sentinel
        self.tensors: list[fb.TensorT] = []
        self.index: dict[str, int] = {}
        self.operators: list[fb.OperatorT] = []
        self.opcodes: dict[tuple[int, int], int] = {}
        self._consts: dict[tuple[str, bytes], int] = {}

    # -- tensors -----------------------------------------------------------------------------
    def tensor(self, name: str, shape: tuple[int, ...], dtype: str, quant: Quant | None = None) -> int:
        """A new activation tensor named ``name`` (names must be unique)."""
        if name in self.index:
            raise ValueError(f"tflite tensor {name!r} defined twice")
        t = fb.TensorT()
        t.name = name
        t.shape = np.asarray(shape, np.int32)
        t.type = TENSOR_TYPES[dtype]
        t.buffer = 0
        t.quantization = quant.to_fb() if quant is not None else None
        self.tensors.append(t)
        self.index[name] = len(self.tensors) - 1
        return self.index[name]

    def constant(self, name: str, array: np.ndarray, quant: Quant | None = None) -> int:
        """A constant tensor holding ``array`` (its own, aligned buffer)."""
        array = np.ascontiguousarray(array)
        index = self.tensor(name, tuple(array.shape), str(array.dtype), quant)
        buf = _AlignedBuffer()
        buf.data = array.reshape(-1).view(np.uint8)
        self.buffers.append(buf)
        self.tensors[index].buffer = len(self.buffers) - 1
        return index

    def integer_view(self, name: str, constant: int, shape: tuple[int, ...]) -> int:
        """A tensor reading ``constant``'s int8 bytes (no copy) with scale 1 and zero point 0,
        so DEQUANTIZE gives the integers themselves; ``constant`` keeps its own params."""
        unit = Quant(np.asarray(1.0, np.float32), np.asarray(0))
        index = self.tensor(name, shape, "int8", unit)
        self.tensors[index].buffer = self.tensors[constant].buffer
        return index

    def scalar(self, base: str, value: Any, dtype: str = "float32") -> int:
        """A small shared float/int constant (deduplicated by value), e.g. an epsilon."""
        array = np.asarray(value, dtype=dtype)
        key = (str(array.dtype) + str(array.shape), array.tobytes())
        if key not in self._consts:
            name = base if base not in self.index else f"{base}.{len(self._consts)}"
            self._consts[key] = self.constant(name, array)
        return self._consts[key]

    def has(self, name: str) -> bool:
        return name in self.index

    def shape_of(self, index: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensors[index].shape)

    def dtype_of(self, index: int) -> str:
        code = self.tensors[index].type
        return next(name for name, value in TENSOR_TYPES.items() if value == code)

    # -- operators ---------------------------------------------------------------------------
    def op(
        self,
        code: int,
        inputs: list[int],
        outputs: list[int],
        *,
        version: int = 1,
        options: Any = None,
        options_type: int = 0,
    ) -> None:
        o = fb.OperatorT()
        o.opcodeIndex = self.opcodes.setdefault((code, version), len(self.opcodes))
        o.inputs = np.asarray(inputs, np.int32)
        o.outputs = np.asarray(outputs, np.int32)
        o.builtinOptionsType = options_type
        o.builtinOptions = options
        self.operators.append(o)

    # -- serialization -----------------------------------------------------------------------
    def finish(
        self,
        inputs: dict[str, str],
        outputs: dict[str, str],
        description: str,
    ) -> memoryview:
        """Serialize; ``inputs``/``outputs`` map signature names to tensor names."""
        sg = fb.SubGraphT()
        sg.name = "main"
        sg.tensors = self.tensors
        sg.operators = self.operators
        sg.inputs = np.asarray([self.index[t] for t in inputs.values()], np.int32)
        sg.outputs = np.asarray([self.index[t] for t in outputs.values()], np.int32)

        def tensor_map(names: dict[str, str]) -> list[fb.TensorMapT]:
            maps = []
            for public, tensor in names.items():
                m = fb.TensorMapT()
                m.name = public
                m.tensorIndex = self.index[tensor]
                maps.append(m)
            return maps

        sig = fb.SignatureDefT()
        sig.signatureKey = "serving_default"
        sig.inputs = tensor_map(inputs)
        sig.outputs = tensor_map(outputs)
        sig.subgraphIndex = 0

        model = fb.ModelT()
        model.version = SCHEMA_VERSION
        model.description = description
        model.buffers = self.buffers
        model.subgraphs = [sg]
        codes = sorted(self.opcodes.items(), key=lambda kv: kv[1])
        model.operatorCodes = []
        for (code, version), _ in codes:
            oc = fb.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = version
            model.operatorCodes.append(oc)
        model.signatureDefs = [sig]
        size = sum(len(b.data) for b in self.buffers if b.data is not None)
        builder = flatbuffers.Builder(size + 1024 * 1024)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        # A view of the builder's buffer: Output() and bytes() would each copy the whole model.
        return memoryview(builder.Bytes)[builder.Head() :]
