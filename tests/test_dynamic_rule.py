"""The run-time quantization rules are defined once (qexport.ir.arith); each backend's emission of
them, in its own runtime's ops, gives the IR's numbers bit for bit, edge rows included."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from qexport.ir import arith
from qexport.ir.graph import Graph, QDType, QuantSpec


def _edge_rows() -> np.ndarray:
    rng = np.random.default_rng(7)
    rows = [
        np.zeros(16),  # all zero
        np.full(16, 0.75),  # constant, positive
        np.full(16, -3.0),  # constant, negative
        rng.uniform(0.01, 5.0, 16),  # one-signed, positive
        -rng.uniform(0.01, 5.0, 16),  # one-signed, negative
        rng.standard_normal(16) * 1e-6,  # tiny
        rng.standard_normal(16) * 40.0,  # BERT-sized outliers
        np.r_[np.zeros(15), 2.54],  # one nonzero
    ]
    return np.stack(rows).astype(np.float32)


def _spec(symmetric: bool) -> QuantSpec:
    return QuantSpec(QDType.INT8, np.array(1.0, np.float32), np.array(0, np.int32), -1, True, symmetric)


def test_torch_emission_of_the_asymmetric_rule_is_the_irs():
    from qexport.backends.torch.module import _asymmetric_rows

    rows = _edge_rows()
    q, zero, scale = _asymmetric_rows(torch.from_numpy(rows), -1)
    want_q, want_zero, want_scale = arith.dynamic_quantize(rows, -1)
    assert np.array_equal(q.numpy(), want_q.astype(np.float32))
    assert np.array_equal(zero.numpy(), want_zero) and np.array_equal(scale.numpy(), want_scale)


@pytest.mark.parametrize(
    ("symmetric", "optimized"),
    [
        (True, True),
        (True, False),
        (False, True),
        (False, False),
    ],
    ids=["symmetric-optimized", "symmetric", "asymmetric-optimized", "asymmetric"],
)
def test_onnx_emission_of_the_dynamic_rules_is_the_irs(symmetric, optimized):
    import onnxruntime as ort

    from qexport.backends.onnx.backend import IR_VERSION, OPSET
    from qexport.backends.onnx.builder import OnnxBuilder
    from qexport.backends.onnx.dynamic import dynamic_fake_quant

    rows = _edge_rows()
    b = OnnxBuilder(Graph(inputs={}, outputs={}, nodes=[], constants={}, values={}))
    dynamic_fake_quant(b, "v", "x", _spec(symmetric))
    io = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(rows.shape)) for n in ("x", "v")]
    model = helper.make_model(
        helper.make_graph(b.nodes, "rule", io[:1], io[1:], list(b.initializers.values())),
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ours = session.run(None, {"x": rows})[0]
    assert np.array_equal(ours, arith.fake_quant(rows, _spec(symmetric)))
