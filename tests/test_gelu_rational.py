"""The rational GELU (qexport/ir/gelu_rational.py): accurate, and the same bits in every runtime."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.special import erf

from qexport import backends
from qexport.ir import gelu_rational
from qexport.ir.graph import QDType
from qexport.ir.ops import Op
from qexport.quant.engine import gelus_to_rewrite, quantize_graph
from qexport.quant.recipe import resolve
from qexport.reference.executor import run as reference_run
from tests.op_cases import SEQ, VOCAB, CaseGraph


def _exact(x: np.ndarray) -> np.ndarray:
    wide = x.astype(np.float64)
    return 0.5 * wide * (1.0 + erf(wide / np.sqrt(2.0)))


def _gelu_graph(rows: np.ndarray):
    """input_ids -> Gather(rows) -> GELU rewritten into the rational form -> y."""
    g = CaseGraph()
    g.graph.outputs["y"] = g.node(
        Op.GELU, [g.node(Op.GATHER, [g.const(rows), "input_ids"])], approximate="none"
    )
    graph = g.graph
    gelu_rational.rewrite(graph, next(n for n in graph.nodes if n.op is Op.GELU))
    graph.validate()
    return graph


def _rows(width: int) -> np.ndarray:
    """[VOCAB, width]: a sweep over the whole range, both clamps' edges, tiny and huge values."""
    rng = np.random.default_rng(7)
    sweep = np.linspace(-12.0, 12.0, (VOCAB - 4) * width).reshape(VOCAB - 4, width)
    edges = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 4 * np.sqrt(2), -4 * np.sqrt(2), 1e30, -1e30])
    special = np.tile(edges, width // len(edges) + 1)[:width]
    normal = rng.standard_normal((3, width)) * np.array([[0.5], [3.0], [40.0]])
    return np.vstack([sweep, special[None], normal]).astype(np.float32)


def test_rational_gelu_is_within_a_few_ulps_of_the_exact_one():
    x = np.concatenate([np.linspace(-12, 12, 1_000_001), np.random.default_rng(0).normal(0, 3, 200_000)])
    x = x.astype(np.float32)
    g = CaseGraph()  # the GELU reads x itself, a constant
    g.graph.outputs["y"] = g.node(Op.GELU, [g.const(x)], approximate="none")
    gelu_rational.rewrite(g.graph, g.graph.nodes[0])
    assert {n.op for n in g.graph.nodes} == {Op.MUL, Op.ADD, Op.SUB, Op.DIV, Op.RELU, Op.ABS}
    got = reference_run(g.graph, {"input_ids": np.zeros((1, SEQ), np.int64)})["y"].astype(np.float64)
    want = _exact(x)
    assert np.abs(got - want).max() <= 1.5e-6
    positive = x > 0.01
    ulps = np.abs(got - want)[positive] / np.spacing(np.abs(want[positive]).astype(np.float32))
    assert ulps.max() <= 3.0


def test_stored_coefficients_are_the_fits():
    numerator, denominator = gelu_rational.fit()
    np.testing.assert_allclose(gelu_rational.NUMERATOR, numerator.astype(np.float32), rtol=1e-5)
    np.testing.assert_allclose(gelu_rational.DENOMINATOR, denominator.astype(np.float32), rtol=1e-5)


@pytest.mark.parametrize("name", ["onnx", "tflite", "torch"])
def test_every_runtime_computes_the_references_bits(name, tmp_path):
    """Their own GELUs differ from the reference on about half the values; this form on none."""
    graph = _gelu_graph(_rows(512))
    backend = backends.get(name)
    path = tmp_path / f"gelu{backend.suffix}"
    backend.lower(graph, path)
    for start in (0, 4):
        feed = {"input_ids": (np.arange(SEQ, dtype=np.int64)[None] + start) % VOCAB}
        want = reference_run(graph, feed)["y"]
        got = np.asarray(backend.run(path, feed)["y"])
        assert np.array_equal(got, want), f"{name}: {np.mean(got != want):.2%} of values differ"


def test_gelus_read_by_int16_islands_or_exact_floats_are_rewritten_and_no_other(tiny_model_dirs):
    """An 8-bit recipe with int16 FFN inputs (int8-mixed's islands, by rule here) rewrites the
    GELUs before them, and one with ``exact_floats`` (int8-full) every GELU a quantizer reads;
    int8 and int16x8 (every quantizer int16: its files stay 65 dB from the IR with the
    runtimes' own GELU) keep the op."""
    import qexport
    from qexport.quant.calibration import load_calibration
    from qexport.quant.recipe import LayerRule

    graph = qexport.capture(tiny_model_dirs["bert"], seq_len=16)
    calib = load_calibration(graph, None, seq_len=graph.metadata["capture"]["seq_len"], tokenizer_dir=None)
    islands = replace(
        resolve("int8"), name="ffn-int16", rules=(LayerRule(r"layer\.\d+\.output\.dense$", "int16"),)
    )
    gelus = [n.name for n in graph.nodes if n.op is Op.GELU]
    assert gelus
    cases = [(islands, gelus), (resolve("int8-full"), gelus), (resolve("int8"), []), (resolve("int16x8"), [])]
    for recipe, rewritten in cases:
        quantized = quantize_graph(graph, recipe, calib)
        kept = [n.name for n in quantized.nodes if n.op is Op.GELU]
        rational = sorted({n.name.split(".rational.")[0] for n in quantized.nodes if ".rational." in n.name})
        assert (rational, sorted(kept + rational)) == (sorted(rewritten), sorted(gelus)), recipe.name
        if recipe is islands:
            assert not gelus_to_rewrite(quantized)
            assert all(
                quantized.quant[n.inputs[0]].dtype is QDType.INT16
                for n in quantized.nodes
                if n.op is Op.LINEAR and n.name.endswith(".output.dense") and "attention" not in n.name
            )
