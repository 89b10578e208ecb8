"""Float attention islands (qexport/ir/attention.py) lowered to one ONNX Attention node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import qexport
from qexport.backends import get
from qexport.backends.onnx.backend import OnnxBackend
from qexport.ir import attention
from qexport.quant.recipe import Recipe


def _op_counts(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_minilm_attention_is_one_node_per_layer_with_the_same_outputs(minilm_int8, tmp_path, docstring_texts):
    backend = get("onnx")
    backend.lower(minilm_int8, tmp_path / "fused.onnx")
    OnnxBackend(fuse_attention=False).lower(minilm_int8, tmp_path / "ops.onnx")
    fused, ops = _op_counts(tmp_path / "fused.onnx"), _op_counts(tmp_path / "ops.onnx")
    assert fused.get("Attention") == 6 and "Softmax" not in fused
    assert ops.get("Softmax") == 6 and "Attention" not in ops
    assert "Transpose" not in fused and ops.get("Transpose") == 30  # q, k, k^T, v, context per layer
    inputs = {k: v[:8] for k, v in docstring_texts[1].items()}
    a = backend.run(tmp_path / "fused.onnx", inputs)["last_hidden_state"]
    b = backend.run(tmp_path / "ops.onnx", inputs)["last_hidden_state"]
    # Measured bit-identical on onnxruntime 1.31 (the kernel runs the same MLAS GEMMs and softmax).
    assert np.abs(a - b).max() <= 1e-5


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "electra", "mobilebert"])
def test_each_architecture_fuses_and_matches_the_reference(tiny_model_dirs, tmp_path, arch):
    graph = qexport.quantize(qexport.capture(tiny_model_dirs[arch], seq_len=16), "fp32")
    assert len(attention.find_attention(graph)) == 2  # two layers each
    get("onnx").lower(graph, tmp_path / "m.onnx")
    assert _op_counts(tmp_path / "m.onnx").get("Attention") == 2
    rng = np.random.default_rng(0)
    inputs = {
        "input_ids": rng.integers(0, 500, (4, 16)),
        # the last row masks every key: onnxruntime's kernel needs the mask floored (attention.py)
        "attention_mask": np.array([[1] * 16, [1] * 9 + [0] * 7, [1] * 3 + [0] * 13, [0] * 16]),
    }
    if "token_type_ids" in graph.inputs:
        inputs["token_type_ids"] = np.zeros((4, 16), np.int64)
    ours = get("onnx").run(tmp_path / "m.onnx", inputs)["last_hidden_state"]
    ref = qexport.run_reference(graph, inputs)["last_hidden_state"]
    assert np.abs(ours - ref).max() < 1e-4


def test_quantized_attention_matmuls_stay_separate_ops(tiny_model_dirs, tmp_path):
    graph = qexport.capture(tiny_model_dirs["bert"], seq_len=16)
    recipe = Recipe(name="matmul-inputs", scheme="static", quantize_op_inputs=("MatMul",))
    rng = np.random.default_rng(1)
    calib = {
        "input_ids": rng.integers(0, 500, (8, 16)),
        "attention_mask": np.ones((8, 16), np.int64),
        "token_type_ids": np.zeros((8, 16), np.int64),
    }
    q = qexport.quantize(graph, recipe, calibration=calib)
    assert attention.find_attention(q) == []  # QuantSpecs sit inside the island
    get("onnx").lower(q, tmp_path / "m.onnx")
    counts = _op_counts(tmp_path / "m.onnx")
    assert "Attention" not in counts and counts.get("Softmax") == 2
