"""The .qir format: round trips exactly, and every kind of damage is a QirFormatError."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from qexport.errors import IRError, QirFormatError
from qexport.ir import Graph, Node, Op, QDType, QuantSpec, ValueInfo, serde
from qexport.ir.symbols import evaluate
from qexport.reference.executor import run


def small_graph() -> Graph:
    """x[batch, 4] -> Linear(int8 per-channel weight) -> Relu -> y, activations uint8."""
    weight_q = np.array([[1, -2, 3, 4], [-128, 127, 0, 5]], np.int8)
    w_spec = QuantSpec(QDType.INT8, np.array([0.5, 0.25], np.float32), np.zeros(2, np.int32), axis=0)
    a_spec = QuantSpec(QDType.UINT8, np.array(0.1, np.float32), np.array(128, np.int32))
    return Graph(
        inputs={"x": ValueInfo("float32", ("batch", 4))},
        outputs={"y": "act"},
        nodes=[
            Node("fc", Op.LINEAR, ["x", "fc.weight", "fc.bias"], ["fc"]),
            Node("act", Op.RELU, ["fc"], ["act"]),
        ],
        constants={"fc.weight": weight_q, "fc.bias": np.array([0.1, -0.2], np.float32)},
        values={"fc": ValueInfo("float32", ("batch", 2)), "act": ValueInfo("float32", ("batch", 2))},
        quant={"fc.weight": w_spec, "fc": a_spec},
        metadata={"note": "test"},
    )


def test_round_trip_preserves_everything_bit_for_bit():
    graph = small_graph()
    data = serde.to_bytes(graph)
    back = serde.from_bytes(data)
    assert serde.to_bytes(back) == data
    assert back.quant["fc.weight"].scale.tobytes() == graph.quant["fc.weight"].scale.tobytes()
    assert back.constants["fc.weight"].dtype == np.int8
    assert back.nodes[0].op is Op.LINEAR and back.metadata == {"note": "test"}


def test_the_graph_member_is_readable_json_that_diffs_well():
    with zipfile.ZipFile(io.BytesIO(serde.to_bytes(small_graph()))) as zf:
        assert zf.namelist() == ["graph.json", "arrays.safetensors"]
        doc = json.loads(zf.read("graph.json"))
    assert doc["format"] == "qexport.qir" and doc["version"] == 1
    assert doc["nodes"][0] == {
        "name": "fc",
        "op": "Linear",
        "inputs": ["x", "fc.weight", "fc.bias"],
        "outputs": [{"name": "fc", "dtype": "float32", "shape": ["batch", 2]}],
        "attrs": {},
    }


def test_reference_simulates_quantized_weights_and_activations_exactly():
    graph = small_graph()
    x = np.array([[1.0, 2.0, -1.0, 0.5]], np.float32)
    w = np.array([[0.5, -1.0, 1.5, 2.0], [-32.0, 31.75, 0.0, 1.25]], np.float32)
    fc = x @ w.T + np.array([0.1, -0.2], np.float32)
    fq = (np.clip(np.rint(fc / np.float32(0.1)) + 128, 0, 255) - 128) * np.float32(0.1)
    assert np.array_equal(run(graph, {"x": x})["y"], np.maximum(fq.astype(np.float32), 0))
    assert np.allclose(run(graph, {"x": x}, simulate=False)["y"], np.maximum(fc, 0))


def _rewrite(data: bytes, graph_json: bytes | None = None, arrays: bytes | None = None) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        g, a = zf.read("graph.json"), zf.read("arrays.safetensors")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("graph.json", graph_json if graph_json is not None else g)
        zf.writestr("arrays.safetensors", arrays if arrays is not None else a)
    return buf.getvalue()


def _doc_with(change) -> bytes:
    data = serde.to_bytes(small_graph())
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        doc = json.loads(zf.read("graph.json"))
    change(doc)
    return _rewrite(data, graph_json=json.dumps(doc).encode())


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[: len(d) // 2],
        lambda d: b"",
        lambda d: b"PK\x03\x04" + b"\0" * 40,
        lambda d: _rewrite(d, arrays=b"\x10\0\0\0\0\0\0\0{}"),
        lambda d: _rewrite(d, graph_json=b"{not json"),
        lambda d: _doc_with(lambda doc: doc.update(version=99)),
        lambda d: _doc_with(lambda doc: doc["nodes"][0].update(op="Sorcery")),
        lambda d: _doc_with(lambda doc: doc["nodes"][1].update(inputs=["nowhere"])),
        lambda d: _doc_with(lambda doc: doc["constants"][0].update(shape=[2, 5])),
        lambda d: _doc_with(lambda doc: doc["constants"][0].update(dtype="float64")),
        lambda d: _doc_with(lambda doc: doc["inputs"][0].update(shape=[-1, 4])),
        lambda d: _doc_with(lambda doc: doc.pop("nodes")),
    ],
    ids=[
        "truncated",
        "empty",
        "bad-zip",
        "bad-safetensors",
        "bad-json",
        "version",
        "unknown-op",
        "dangling-input",
        "shape-mismatch",
        "dtype-mismatch",
        "negative-dim",
        "missing-key",
    ],
)
def test_damaged_files_raise_a_format_error(damage):
    with pytest.raises(QirFormatError):
        serde.from_bytes(damage(serde.to_bytes(small_graph())), where="model.qir")


def test_symbolic_dims_are_evaluated_without_eval():
    assert evaluate("batch*seq", {"batch": 2, "seq": 5}) == 10
    assert evaluate("seq-1", {"seq": 5}) == 4
    with pytest.raises(IRError):
        evaluate("__import__('os').system('true')", {})
    with pytest.raises(IRError):
        evaluate("seq", {})
