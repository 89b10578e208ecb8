"""The ``.qir`` file format, version 1 (documented in docs/qir-format.md).

A ``.qir`` is an uncompressed zip with exactly two members, in this order:
``graph.json`` (the graph, human-readable, diffs well) and ``arrays.safetensors`` (every
constant under ``const/<name>``, quant params under ``quant/<value>/scale|zero_point``).
Loading never unpickles or evaluates anything; every field is checked and any defect is a
:class:`QirFormatError`.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from qexport.atomic import write_bytes
from qexport.errors import IRError, QExportError, QirFormatError
from qexport.ir.graph import Graph, Node, QDType, QuantSpec, ValueInfo
from qexport.ir.ops import DTYPES, Op

FORMAT = "qexport.qir"
VERSION = 1
GRAPH_MEMBER = "graph.json"
ARRAYS_MEMBER = "arrays.safetensors"
MAX_GRAPH_JSON = 256 * 2**20
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# ---------------------------------------------------------------- writing


def to_bytes(graph: Graph) -> bytes:
    """Serialize deterministically: same graph, same bytes."""
    graph.validate()
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "metadata": graph.metadata,
        "inputs": [_value_doc(n, v) for n, v in graph.inputs.items()],
        "outputs": [{"name": k, "value": v} for k, v in graph.outputs.items()],
        "constants": [
            {"name": n, "dtype": str(a.dtype), "shape": list(a.shape)} for n, a in graph.constants.items()
        ],
        "nodes": [
            {
                "name": node.name,
                "op": node.op.value,
                "inputs": node.inputs,
                "outputs": [_value_doc(o, graph.values[o]) for o in node.outputs],
                "attrs": dict(sorted(node.attrs.items())),
            }
            for node in graph.nodes
        ],
        "quant": [
            {
                "value": name,
                "dtype": spec.dtype.value,
                "axis": spec.axis,
                "dynamic": spec.dynamic,
                "channels": int(spec.scale.shape[0]) if spec.scale.ndim else None,
                **({} if spec.symmetric else {"symmetric": False}),
            }
            for name, spec in graph.quant.items()
        ],
    }
    try:
        text = json.dumps(doc, indent=1, allow_nan=False, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise IRError(f"graph is not serializable: {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    for name, array in graph.constants.items():
        arrays[f"const/{name}"] = np.asarray(array, order="C")
    for name, spec in graph.quant.items():
        arrays[f"quant/{name}/scale"] = np.asarray(spec.scale, order="C")
        arrays[f"quant/{name}/zero_point"] = np.asarray(spec.zero_point, order="C")
    blob = st_save(arrays) if arrays else b""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for member, data in ((GRAPH_MEMBER, text.encode()), (ARRAYS_MEMBER, blob)):
            info = zipfile.ZipInfo(member, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def save(graph: Graph, path: str | Path) -> None:
    """Write ``graph`` to ``path`` (atomically)."""
    write_bytes(Path(path), to_bytes(graph))


def _value_doc(name: str, info: ValueInfo) -> dict[str, Any]:
    return {"name": name, "dtype": info.dtype, "shape": list(info.shape)}


# ---------------------------------------------------------------- reading


def load(path: str | Path) -> Graph:
    """Read a ``.qir`` file. Any defect raises QirFormatError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise QirFormatError(f"{path}: no such file") from None
    except OSError as exc:
        raise QirFormatError(f"{path}: cannot read ({exc.strerror})") from None
    return from_bytes(data, where=str(path))


def from_bytes(data: bytes, where: str = "<bytes>") -> Graph:
    try:
        return _from_bytes(data)
    except QirFormatError as exc:
        raise QirFormatError(f"{where}: {exc}; the file is not a valid .qir, re-create it") from None
    except QExportError as exc:
        raise QirFormatError(f"{where}: {exc}; the file is not a valid .qir, re-create it") from None


# What zipfile, struct and utf-8 decoding raise on a damaged or hostile container
# (NotImplementedError: an unsupported compression method); each becomes a QirFormatError.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    ValueError,
    OSError,
    EOFError,
    NotImplementedError,
    struct.error,
    OverflowError,
    IndexError,
    KeyError,
    UnicodeDecodeError,
)


def _from_bytes(data: bytes) -> Graph:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except _ZIP_ERRORS as exc:
        raise QirFormatError(f"not a qir container ({exc})") from None
    names = [i.filename for i in infos]
    if names != [GRAPH_MEMBER, ARRAYS_MEMBER]:
        raise QirFormatError(f"expected members {[GRAPH_MEMBER, ARRAYS_MEMBER]}, found {names[:5]}")
    for info in infos:
        # Stored members only, and no size claims beyond the file itself: no zip bombs.
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
            raise QirFormatError(f"member {info.filename} is compressed or claims a bad size")
    if infos[0].file_size > MAX_GRAPH_JSON:
        raise QirFormatError("graph.json is implausibly large")
    try:
        text = zf.read(GRAPH_MEMBER).decode("utf-8")
        blob = zf.read(ARRAYS_MEMBER)
    except _ZIP_ERRORS as exc:
        raise QirFormatError(f"unreadable member ({exc})") from None
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise QirFormatError(f"graph.json is not valid JSON ({exc})") from None
    try:
        arrays = st_load(blob) if blob else {}
    except (SafetensorError, ValueError, TypeError, OverflowError) as exc:
        raise QirFormatError(f"arrays.safetensors is corrupt ({exc})") from None
    return _parse(doc, arrays)


def _parse(doc: Any, arrays: dict[str, np.ndarray]) -> Graph:
    r = _Reader(doc, "graph.json")
    if r.get("format", str) != FORMAT:
        raise QirFormatError(f"graph.json: format is not {FORMAT!r}")
    version = r.get("version", int)
    if version != VERSION:
        raise QirFormatError(f"format version {version} is not supported (this qexport reads {VERSION})")
    metadata = r.get("metadata", dict)
    inputs: dict[str, ValueInfo] = {}
    for item in r.items("inputs"):
        name, info = _parse_value(item)
        inputs[name] = info
    constants: dict[str, np.ndarray] = {}
    for item in r.items("constants"):
        name = item.get("name", str)
        dtype = item.get("dtype", str)
        shape = tuple(item.ints("shape"))
        array = arrays.get(f"const/{name}")
        if array is None or str(array.dtype) != dtype or array.shape != shape:
            raise QirFormatError(f"constant {name!r}: array missing or not {dtype}{list(shape)}")
        constants[name] = array
    values: dict[str, ValueInfo] = {}
    nodes: list[Node] = []
    for item in r.items("nodes"):
        op_name = item.get("op", str)
        try:
            op = Op(op_name)
        except ValueError:
            raise QirFormatError(f"{item.where}: unknown op {op_name!r}") from None
        outs = []
        for out in item.items("outputs"):
            name, info = _parse_value(out)
            values[name] = info
            outs.append(name)
        node_inputs = item.get("inputs", list)
        if not all(isinstance(i, str) for i in node_inputs):
            raise QirFormatError(f"{item.where}.inputs: expected strings")
        nodes.append(Node(item.get("name", str), op, list(node_inputs), outs, item.get("attrs", dict)))
    outputs = {o.get("name", str): o.get("value", str) for o in r.items("outputs")}
    quant: dict[str, QuantSpec] = {}
    for item in r.items("quant"):
        name = item.get("value", str)
        try:
            qdtype = QDType(item.get("dtype", str))
        except ValueError:
            raise QirFormatError(f"{item.where}: unknown quant dtype") from None
        axis = item.get("axis", (int, type(None)))
        scale = arrays.get(f"quant/{name}/scale")
        zero = arrays.get(f"quant/{name}/zero_point")
        if scale is None or zero is None:
            raise QirFormatError(f"quant params of {name!r} missing from arrays.safetensors")
        symmetric = item.get("symmetric", bool) if "symmetric" in item.doc else True
        quant[name] = QuantSpec(qdtype, scale, zero, axis, bool(item.get("dynamic", bool)), symmetric)
    graph = Graph(inputs, outputs, nodes, constants, values, quant, metadata)
    graph.validate()
    return graph


def _parse_value(r: _Reader) -> tuple[str, ValueInfo]:
    name = r.get("name", str)
    dtype = r.get("dtype", str)
    if dtype not in DTYPES:
        raise QirFormatError(f"{r.where}: unknown dtype {dtype!r}")
    shape: list[Any] = r.get("shape", list)
    if not all(isinstance(d, str) or (type(d) is int and d >= 0) for d in shape):
        raise QirFormatError(f"{r.where}.shape: dims must be non-negative ints or names")
    return name, ValueInfo(dtype, tuple(shape))


class _Reader:
    """Typed access into parsed JSON with paths in error messages."""

    def __init__(self, doc: Any, where: str) -> None:
        if not isinstance(doc, dict):
            raise QirFormatError(f"{where}: expected an object")
        self.doc = doc
        self.where = where

    def get(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in self.doc:
            raise QirFormatError(f"{self.where}: missing key {key!r}")
        value = self.doc[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise QirFormatError(f"{self.where}.{key}: wrong type")
        if not isinstance(value, kinds):
            raise QirFormatError(f"{self.where}.{key}: wrong type")
        return value

    def items(self, key: str) -> list[_Reader]:
        return [_Reader(v, f"{self.where}.{key}[{i}]") for i, v in enumerate(self.get(key, list))]

    def ints(self, key: str) -> list[int]:
        values = self.get(key, list)
        if not all(type(v) is int and v >= 0 for v in values):
            raise QirFormatError(f"{self.where}.{key}: expected non-negative ints")
        return values
