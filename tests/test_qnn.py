"""The --for npu ONNX file on Qualcomm's HTP (onnxruntime-qnn's x86-64 simulator), CPU fallback off.

The NPU form writes activations as uint8/uint16 (QNN's HTP refuses signed 16-bit Abs and
MatMul), Linears as plain QDQ and static shapes [1, seq]: the HTP then takes every node.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import qexport
from qexport.backends.onnx import OnnxBackend
from qexport.backends.onnx.qnn import htp_session
from qexport.quant.calibration import random_tokens


def sqnr(ours: np.ndarray, ref: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ours - ref) ** 2)))


def run_htp(path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = htp_session(path)  # raises unless every node is placed on QNN
    names = [o.name for o in session.get_outputs()]
    rows = [
        session.run(names, {k: v[i : i + 1] for k, v in inputs.items()})
        for i in range(len(inputs["input_ids"]))
    ]
    return {name: np.concatenate([row[j] for row in rows]) for j, name in enumerate(names)}


@pytest.mark.parametrize("name", ["bert", "distilbert"])
@pytest.mark.parametrize(("recipe", "agreement_db"), [("npu-int16", 35.0), ("npu-int8", 25.0)])
def test_the_htp_runs_the_whole_file(name, recipe, agreement_db, tiny_model_dirs, tmp_path):
    graph = qexport.capture(tiny_model_dirs[name], seq_len=16)
    calib = random_tokens(graph, 16, samples=8)
    quantized = qexport.quantize(graph, recipe, calibration=calib)
    path = tmp_path / "model.onnx"
    facts = OnnxBackend().lower(quantized, path)
    assert facts["npu_form"] and facts["linears"] == "qdq"
    model = onnx.load(str(path))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 16]
    inputs = {k: v[:2] for k, v in calib.items()}
    simulated = qexport.run_reference(quantized, inputs)
    for key, value in run_htp(path, inputs).items():
        assert sqnr(value, simulated[key]) >= agreement_db, (key, sqnr(value, simulated[key]))


def test_minilm_runs_whole_on_the_htp(minilm_npu_graph, docstring_texts, tmp_path):
    """All-MiniLM-L6-v2 builds with CPU fallback disabled and runs. Its outputs are ~21 dB from
    the IR on the simulator (issue #23's gate asks 30; the per-layer drift starts at the int16
    softmax, docs/integer.md), far from the peers' collapse (cosine 0.26): this is a floor."""
    path = tmp_path / "model.onnx"
    OnnxBackend().lower(minilm_npu_graph, path)
    one = {k: v[:1] for k, v in docstring_texts[1].items()}
    out = run_htp(path, one)
    simulated = qexport.run_reference(minilm_npu_graph, one)
    keep = one["attention_mask"][..., None] != 0
    assert sqnr(out["last_hidden_state"] * keep, simulated["last_hidden_state"] * keep) >= 18.0
