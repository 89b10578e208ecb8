"""Residual channels scaled by powers of two (qexport/ir/residual_scale.py, docs/integer.md):
exact in float, computed by LiteRT as by the IR, and what keeps MiniLM's 8-bit residual
stream from collapsing."""

from __future__ import annotations

import numpy as np
import pytest

import qexport
from qexport.backends.tflite import TfliteBackend
from qexport.ir.graph import copy_graph
from qexport.ir.integer_form import to_integer_form
from qexport.ir.residual_scale import MAX_SCALE, channel_divisors, residual_adds, scale_residuals
from qexport.quant.calibration import random_tokens
from tests.conftest import masked_sqnr


@pytest.fixture(scope="module")
def outlier_bert(tiny_model_dirs):
    """The tiny BERT with BERT's outlier channels planted: two output channels of every FFN
    output Linear 400x larger (its residual sums then reach ~10x the other channels)."""
    graph = qexport.capture(tiny_model_dirs["bert"], seq_len=16)
    producer = graph.producer()
    for add in residual_adds(graph).values():
        linear = next(producer[v] for v in add.inputs if v in producer and producer[v].op.value == "Linear")
        if linear.name.endswith("output.dense") and "attention" not in linear.name:
            weight = linear.inputs[1]
            graph.constants[weight][[3, 17]] *= 400.0
    return graph


def test_divisors_are_powers_of_two_for_outlier_channels_only():
    peaks = np.concatenate([np.linspace(1.0, 2.0, 380), [4.0, 16.0, 200.0, 1e4]]).astype(np.float32)
    d = channel_divisors(peaks)  # the 95th percentile of the peaks is 2.0
    assert np.all(d[:380] == 1.0)
    assert list(d[380:]) == [2.0, 8.0, 64.0, float(MAX_SCALE)]


def test_the_rewrite_is_exact_in_float(outlier_bert):
    graph = copy_graph(outlier_bert)
    inputs = random_tokens(graph, 16, samples=4)
    before = qexport.run_reference(graph, inputs, simulate=False)
    width = next(iter(before.values())).shape[-1]
    d = {
        name: np.where(np.arange(width) % 5 == 0, 8.0, 1.0).astype(np.float32)
        for name in residual_adds(graph)
    }
    scales = scale_residuals(graph, d)
    assert set(scales) == set(d)
    to_integer_form(graph, prescale="peak", channel_scales=scales)
    after = qexport.run_reference(graph, inputs, simulate=False)
    for key, value in before.items():
        np.testing.assert_allclose(after[key], value, rtol=1e-4, atol=1e-5)


def test_litert_computes_the_scaled_irs_numbers(outlier_bert, tmp_path):
    calib = random_tokens(outlier_bert, 16, samples=16)
    held = {k: v[8:] for k, v in calib.items()}
    scaled = qexport.quantize(outlier_bert, "npu-int8", calibration=calib)
    assert scaled.metadata["integer_form"]["channel_scaled"]  # the planted channels were scaled
    path = tmp_path / "model.tflite"
    TfliteBackend().lower(scaled, path)
    out = TfliteBackend().run(path, held)["last_hidden_state"]
    simulated = qexport.run_reference(scaled, held)["last_hidden_state"]
    assert masked_sqnr(out, simulated, held["attention_mask"]) >= 20.0


def test_learned_rounding_aims_at_the_scaled_rows(outlier_bert):
    """GPTQ (``--learn``) rounds each Linear's float weight with the scales the recipe gave it;
    where the residual scaling divided a Linear's rows by ``d`` it must divide the float weight
    too, or the outlier rows saturate (this tiny BERT: 27.0 -> 7.5 dB; MiniLM: 10.3 -> -1 dB)."""
    calib = random_tokens(outlier_bert, 16, samples=32)
    fit, held = ({k: v[i : i + 16] for k, v in calib.items()} for i in (0, 16))
    ref = qexport.run_reference(outlier_bert, held, simulate=False)["last_hidden_state"]
    db = {
        learn: masked_sqnr(
            qexport.run_reference(
                qexport.quantize(outlier_bert, "npu-int8", calibration=fit, learn=learn), held
            )["last_hidden_state"],
            ref,
            held["attention_mask"],
        )
        for learn in (False, True)
    }
    assert db[True] >= db[False] - 1.0, db


def test_minilm_npu_int8_no_longer_collapses(minilm, docstring_texts):
    """all-MiniLM-L6-v2's FFN sums reach ±220 in 3-4 channels of a few tokens: npu-int8 was
    3-4 dB from fp32 (pooled) before the scaling, 9-10 dB with it (docs/integer.md)."""
    graph = minilm[0].graph
    calib = {k: v[:32] for k, v in docstring_texts[0].items()}
    held = {k: v[:32] for k, v in docstring_texts[1].items()}
    quantized = qexport.quantize(graph, "npu-int8", calibration=calib)
    assert len(quantized.metadata["integer_form"]["channel_scaled"]) >= 6
    mask = held["attention_mask"][..., None].astype(np.float64)
    ours, ref = (
        (qexport.run_reference(g, held, simulate=s)["last_hidden_state"] * mask).sum(1) / mask.sum(1)
        for g, s in ((quantized, True), (graph, False))
    )
    db = 10 * np.log10(np.sum(ref**2) / np.sum((ours - ref) ** 2))
    assert db >= 8.0, db
