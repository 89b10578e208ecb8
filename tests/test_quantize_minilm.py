"""Quantization engine acceptance on real weights: calibrate on 128 sentences, evaluate on 200 others.

Metric: mean-pooled last_hidden_state of the IR simulation vs torch-exact fp32 (the float IR,
itself proven within 1e-4 of torch).
"""

from __future__ import annotations

import numpy as np
import pytest

import qexport
from qexport.ir import serde


@pytest.fixture(scope="module")
def texts(docstring_texts):
    return docstring_texts


def pooled_outputs(graph, inputs, simulate=True):
    rows = []
    for start in range(0, len(inputs["input_ids"]), 8):
        batch = {k: v[start : start + 8] for k, v in inputs.items()}
        hidden = qexport.run_reference(graph, batch, simulate=simulate)["last_hidden_state"]
        mask = batch["attention_mask"][..., None].astype(np.float32)
        rows.append((hidden * mask).sum(1) / mask.sum(1))
    return np.concatenate(rows)


def parity(ours, ref):
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ours - ref).astype(np.float64) ** 2))
    return float(cos.mean()), float(cos.min()), float(sqnr)


@pytest.fixture(scope="module")
def int8_graph(minilm_int8):
    return minilm_int8


def test_int8_keeps_bert_accurate(int8_pooled, fp32_pooled):
    cos_mean, cos_min, sqnr = parity(int8_pooled, fp32_pooled)
    assert cos_mean >= 0.998 and cos_min >= 0.99 and sqnr >= 24.0, (cos_mean, cos_min, sqnr)


def test_dynamic_keeps_bert_accurate(minilm, texts, fp32_pooled):
    graph = qexport.quantize(minilm[0].graph, "dynamic")
    cos_mean, _, _ = parity(pooled_outputs(graph, texts[1]), fp32_pooled)
    assert cos_mean >= 0.998


def test_int16x8_reaches_30_db(minilm, texts, fp32_pooled):
    graph = qexport.quantize(minilm[0].graph, "int16x8", calibration=texts[0])
    assert parity(pooled_outputs(graph, texts[1]), fp32_pooled)[2] >= 30.0


def test_int8_stores_integer_weights_biases_and_embeddings(int8_graph):
    dense = "encoder.layer.1.intermediate.dense"
    assert int8_graph.constants[f"{dense}.weight"].dtype == np.int8
    assert int8_graph.quant[f"{dense}.weight"].axis == 0
    bias_spec = int8_graph.quant[f"{dense}.bias"]
    assert int8_graph.constants[f"{dense}.bias"].dtype == np.int32
    act_spec = int8_graph.quant[int8_graph.node(dense).inputs[0]]
    assert np.array_equal(
        bias_spec.scale, (act_spec.scale * int8_graph.quant[f"{dense}.weight"].scale).astype(np.float32)
    )
    assert int8_graph.constants["embeddings.word_embeddings.weight"].dtype == np.int8
    weight_bytes = sum(a.nbytes for a in int8_graph.constants.values())
    assert weight_bytes < 0.27 * 22.7e6 * 4


def test_int8_records_its_decisions(int8_graph):
    meta = int8_graph.metadata
    assert meta["recipe"]["name"] == "int8" and meta["calibration"]["samples"] == 128
    assert "sensitivity" not in meta  # measured only when a recipe uses it (int8-mixed, below)


def test_int8_mixed_puts_the_most_sensitive_groups_in_int16(minilm, texts, fp32_pooled):
    graph = qexport.quantize(minilm[0].graph, "int8-mixed", calibration=texts[0])
    rows = graph.metadata["sensitivity"]
    assert len(rows) == 25 and all(0 < r["sqnr_db"] < 60 for r in rows)
    wide = [r for r in rows if r["int16"]]
    assert len(wide) == 3 and max(r["sqnr_db"] for r in wide) <= min(
        r["sqnr_db"] for r in rows if not r["int16"]
    )
    assert all(graph.quant[r["input"]].dtype.value == "int16" for r in wide)
    # MiniLM's most sensitive groups are FFN-down inputs: their GELUs take the rational form
    ffn = [r for r in wide if r["input"].endswith(".output.dense.input") and ".attention." not in r["input"]]
    rational = {n.name.split(".rational.")[0] for n in graph.nodes if ".rational." in n.name}
    assert len(rational) == len(ffn) == 3
    assert parity(pooled_outputs(graph, texts[1]), fp32_pooled)[2] >= 24.5


def test_quantized_ir_round_trips_and_simulates_identically(int8_graph, texts, tmp_path):
    serde.save(int8_graph, tmp_path / "q.qir")
    back = serde.load(tmp_path / "q.qir")
    batch = {k: v[:2] for k, v in texts[1].items()}
    a = qexport.run_reference(int8_graph, batch)["last_hidden_state"]
    b = qexport.run_reference(back, batch)["last_hidden_state"]
    assert np.array_equal(a, b)
