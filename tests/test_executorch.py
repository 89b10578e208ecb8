"""--to executorch: a .pte whose Linears run in XNNPACK's int8 kernels (dynamic or static),
carrying the IR's integers, run by ExecuTorch's own runtime."""

from __future__ import annotations

import pytest

import qexport
from qexport.backends import default_targets, get
from qexport.errors import QExportError
from qexport.quant.calibration import random_tokens
from tests.conftest import masked_sqnr
from tests.test_qnn import sqnr


def test_minilm_pte_runs_in_executorch_at_the_irs_numbers(minilm, docstring_texts, tmp_path):
    """all-MiniLM-L6-v2, recipe dynamic, 8 held-out sentences at seq 128. Measured (AMD EPYC
    Zen 5, ExecuTorch 1.5.1): 35.3 dB from the IR on the evaluation text (pooler 34.2), the
    recipe's accuracy vs fp32 (28.0 dB, as the IR)."""
    graph = qexport.quantize(minilm[0].graph, "dynamic", calibration=docstring_texts[0])
    backend = get("executorch")
    path = tmp_path / "model.pte"
    facts = backend.lower(graph, path)
    assert facts["linears_in_delegates"] == "all" and facts["static_shape"] == [1, 128]
    held_out = {k: v[:8] for k, v in docstring_texts[1].items()}
    out = backend.run(path, held_out)
    simulated = qexport.run_reference(graph, held_out)
    fp32 = qexport.run_reference(minilm[0].graph, held_out, simulate=False)
    mask = held_out["attention_mask"]
    key = "last_hidden_state"
    assert masked_sqnr(out[key], simulated[key], mask) >= 33.0, masked_sqnr(out[key], simulated[key], mask)
    ours, irs = masked_sqnr(out[key], fp32[key], mask), masked_sqnr(simulated[key], fp32[key], mask)
    assert ours >= irs - 0.5, (ours, irs)


@pytest.mark.parametrize("recipe", ["dynamic", "int8-full", "npu-int8"])
def test_tiny_pte_is_deterministic_and_matches_the_ir(tiny_model_dirs, tmp_path, recipe):
    """Both of XNNPACK's int8 Linears: dynamic (qd8) and static (qs8, the full-integer recipes).
    Measured on a tiny BERT: 137-139 dB from the IR (dynamic, int8-full), bit-exact (npu-int8).
    Determinism is checked once per form, dynamic (the quantizer's) and npu-int8 (qdq.py's Q/DQ
    module): int8-full takes the static form's path too, and a lowering costs 10-35 s even here."""
    graph = qexport.capture(tiny_model_dirs["bert"], seq_len=16)
    calib = random_tokens(graph, 16, samples=8)
    quantized = qexport.quantize(graph, recipe, calibration=calib)
    backend = get("executorch")
    first, second = tmp_path / "a.pte", tmp_path / "b.pte"
    facts = backend.lower(quantized, first)
    assert facts["linears_in_delegates"] == "all"
    if recipe != "int8-full":
        backend.lower(quantized, second)
        assert first.read_bytes() == second.read_bytes()
    inputs = {k: v[:4] for k, v in calib.items()}
    out = backend.run(first, inputs)
    simulated = qexport.run_reference(quantized, inputs)
    assert set(out) == {"last_hidden_state", "pooler_output"}
    for key in out:
        assert sqnr(out[key], simulated[key]) >= 40.0, (key, sqnr(out[key], simulated[key]))


@pytest.mark.parametrize("recipe", ["int8", "npu-int16"])
def test_a_recipe_xnnpack_cannot_run_is_refused_before_writing(tiny_model_dirs, tmp_path, recipe):
    """int8's Linears write float (XNNPACK's static Linear writes int8); npu-int16's read int16."""
    graph = qexport.capture(tiny_model_dirs["bert"], seq_len=16)
    quantized = qexport.quantize(graph, recipe, calibration=random_tokens(graph, 16, samples=4))
    path = tmp_path / "model.pte"
    with pytest.raises(
        QExportError,
        match=r"Linear 'encoder\.layer\.0\.attention\.self\.query'.*--recipe dynamic or one of those",
    ):
        get("executorch").lower(quantized, path)
    assert not path.exists()


def test_executorch_is_written_only_when_asked():
    assert "executorch" not in default_targets()
    assert {"onnx", "tflite", "torch"} <= set(default_targets())
