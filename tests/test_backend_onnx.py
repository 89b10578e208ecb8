"""ONNX QDQ backend on real MiniLM weights, run by the real onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import qexport
from qexport.backends import get
from qexport.backends.onnx.notes import slow_path_notes
from qexport.ir.ops import Op
from tests.conftest import masked_sqnr, run_cli


@pytest.fixture(scope="module")
def backend():
    return get("onnx")


@pytest.fixture(scope="module")
def int8_onnx(minilm_int8_file):
    path, facts = minilm_int8_file("onnx")
    assert facts["opset"] == 23 and facts["session_config"] == {"session.set_denormal_as_zero": "1"}
    return path


def onnx_pooled(backend, path, inputs, session=None):
    session = session or backend.session(path)
    rows = []
    for start in range(0, len(inputs["input_ids"]), 8):
        batch = {k: v[start : start + 8] for k, v in inputs.items()}
        hidden = backend.run(path, batch, session=session)["last_hidden_state"]
        mask = batch["attention_mask"][..., None].astype(np.float32)
        rows.append((hidden * mask).sum(1) / mask.sum(1))
    return np.concatenate(rows)


def test_default_recipe_has_no_slow_path_note(minilm_int8):
    assert slow_path_notes(minilm_int8) == []


def test_model_passes_the_full_checker(int8_onnx):
    onnx.checker.check_model(onnx.load(str(int8_onnx)), full_check=True)


@pytest.mark.parametrize(("batch", "seq"), [(1, 16), (3, 57), (8, 128)])
def test_dynamic_batch_and_sequence(int8_onnx, backend, minilm_int8, docstring_texts, batch, seq):
    inputs = {k: v[:batch, :seq] for k, v in docstring_texts[1].items()}
    out = backend.run(int8_onnx, inputs)
    assert out["last_hidden_state"].shape == (batch, seq, 384) and out["pooler_output"].shape == (batch, 384)
    ref = qexport.run_reference(minilm_int8, inputs)["last_hidden_state"]
    assert masked_sqnr(out["last_hidden_state"], ref, inputs["attention_mask"]) > 25


def test_activation_bias_and_table_params_are_the_irs_bit_for_bit(int8_onnx, minilm_int8):
    """Beyond the Linear weights (tests/test_backends.py): every QuantSpec's initializers."""
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(int8_onnx)).graph.initializer}
    graph = minilm_int8
    assert graph.quant, "nothing quantized"
    linear_inputs = {
        n.inputs[2]: n.inputs[:2] for n in graph.nodes if n.op is Op.LINEAR and len(n.inputs) > 2
    }
    for name, spec in graph.quant.items():
        if spec.dtype.value == "int32":  # a bias scale is s_x·s_w, the Gemm's rescale: not stored twice
            x, w = linear_inputs[name]
            assert f"{name}_scale" not in inits, name
            assert spec.scale.tobytes() == (inits[f"{x}_scale"] * inits[f"{w}_scale"]).tobytes(), name
            continue
        assert inits[f"{name}_scale"].tobytes() == spec.scale.tobytes(), name
        if f"{name}_zero_point" not in inits:  # embedding tables: gathered rows scaled, zero point 0
            assert name.endswith("embeddings.weight") and not spec.zero_point.any(), name
            continue
        assert np.array_equal(inits[f"{name}_zero_point"], spec.zero_point.astype(spec.dtype.storage)), name
        assert inits[f"{name}_zero_point"].dtype == np.dtype(spec.dtype.storage), name
    dense = "encoder.layer.1.intermediate.dense"
    assert np.array_equal(inits[f"{dense}.bias_quantized"], graph.constants[f"{dense}.bias"])
    table = "embeddings.word_embeddings.weight"
    assert np.array_equal(inits[f"{table}_quantized"], graph.constants[table])
    assert not any(a.dtype == np.float32 and a.size > 1_000_000 for a in inits.values()), (
        "fp32 copy of a weight"
    )


def test_graph_optimizations_on_and_off_give_the_same_bits(int8_onnx, backend, minilm_int8, docstring_texts):
    """Unoptimized, onnxruntime runs the graph literally: a float32 Gemm of the integer-valued
    DequantizeLinear outputs, exact while partial sums stay below 2**24, then the rescale. Fused,
    QGemm sums the same integers in int32. Both are the IR's (acc + q_bias) · s_x·s_w."""
    for node in minilm_int8.nodes:  # the worst case of every integer Linear stays exact in float32
        if node.op is Op.LINEAR and node.inputs[1] in minilm_int8.quant and len(node.inputs) > 2:
            x_spec = minilm_int8.quant[node.inputs[0]]
            span = max(int(x_spec.zero_point) - x_spec.dtype.qmin, x_spec.dtype.qmax - int(x_spec.zero_point))
            weight = np.abs(minilm_int8.constants[node.inputs[1]].astype(np.int64))
            bound = span * weight.sum(1) + np.abs(minilm_int8.constants[node.inputs[2]].astype(np.int64))
            assert bound.max() < 2**24, node.name
    held_out = {k: v[:16] for k, v in docstring_texts[1].items()}
    on = backend.run(int8_onnx, held_out, session=backend.session(int8_onnx, optimize=True))
    off = backend.run(int8_onnx, held_out, session=backend.session(int8_onnx, optimize=False))
    for name in on:
        assert np.array_equal(on[name], off[name]), name


def test_plain_qdq_linears_give_the_same_bits_when_fused(
    int8_onnx, backend, minilm_int8, tmp_path, docstring_texts
):
    """OnnxBackend(integer_linears=False) keeps every scale inside the DequantizeLinears (the int32
    bias's too); onnxruntime's QGemm then computes the same (acc + q_bias) · s_x·s_w."""
    from qexport.backends.onnx.backend import OnnxBackend

    plain = tmp_path / "plain.onnx"
    OnnxBackend(integer_linears=False).lower(minilm_int8, plain)
    model = onnx.load(str(plain))
    assert not any(n.output[0].endswith("_integers") for n in model.graph.node)
    assert "encoder.layer.0.attention.self.query.bias_scale" in {t.name for t in model.graph.initializer}
    inputs = {k: v[:8] for k, v in docstring_texts[1].items()}
    ours, theirs = backend.run(int8_onnx, inputs), backend.run(plain, inputs)
    assert all(np.array_equal(ours[name], theirs[name]) for name in ours)


def test_cli_writes_the_chosen_linear_form_and_records_it(tiny_model_dirs, tmp_path):
    out = tmp_path / "out"
    args = ("--to", "onnx", "--onnx-linears", "qdq", "-o", str(out), "--seq-len", "16", "--no-check")
    result = run_cli(str(tiny_model_dirs["bert"]), *args)
    assert result.returncode == 0, result.stderr
    (artifact,) = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert artifact["linears"] == "qdq"
    nodes = onnx.load(str(out / artifact["file"])).graph.node
    assert not any(n.output[0].endswith("_integers") for n in nodes)


def test_fp32_recipe_gives_a_float_model(minilm, backend, tmp_path, docstring_texts):
    graph = qexport.quantize(minilm[0].graph, "fp32")
    backend.lower(graph, tmp_path / "fp32.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "fp32.onnx")).graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}
    inputs = {k: v[:2] for k, v in docstring_texts[1].items()}
    ours = backend.run(tmp_path / "fp32.onnx", inputs)["last_hidden_state"]
    assert np.abs(ours - qexport.run_reference(graph, inputs)["last_hidden_state"]).max() < 1e-4


def test_dynamic_recipe_lowers_and_agrees(minilm, backend, tmp_path, docstring_texts):
    graph = qexport.quantize(minilm[0].graph, "dynamic")
    path = tmp_path / "dyn.onnx"
    facts = backend.lower(graph, path)
    # no integer kernel in onnxruntime for per-token scales: the user is told which recipe is fast
    assert any("int8 is the fast ONNX recipe" in n["text"] for n in facts["notes"]), facts
    # Every Linear is a float Gemm of the run-time integer steps q - z by Cast(int8 weight), not
    # a DequantizeLinear that onnxruntime would turn into MatMulNBits (~3.5x slower here).
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    kinds = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "MatMulNBits" not in kinds and kinds.count("Gemm") == 37, sorted(set(kinds))
    assert "session.qdq_matmulnbits_accuracy_level" not in facts["session_config"]
    inputs = {k: v[:8] for k, v in docstring_texts[1].items()}
    ours = backend.run(path, inputs)["last_hidden_state"]
    ref = qexport.run_reference(graph, inputs)["last_hidden_state"]
    mask = inputs["attention_mask"]
    each = sorted(masked_sqnr(ours[i : i + 1], ref[i : i + 1], mask[i : i + 1]) for i in range(8))
    # The Linears sum the IR's integers and round as it does (tests/test_ops.py checks the
    # Linear on its own, edge rows included). Here onnxruntime's float32 LayerNorm, softmax and
    # GELU differ from the IR's by an ulp, which flips a run-time quantizer's step now and then
    # and re-rolls the noise downstream. How often depends on the CPU's kernels: on a Zen 4 EPYC
    # 4 of these 8 sentences matched to ~130 dB; on a Zen 5 (LayerNorm 1 ulp off from the first
    # token) they measure 29.5-56 dB. The dequantized-weight form gave ~32-37 dB on every
    # sentence (docs/backend-onnx.md).
    assert each[4] >= 40.0 and each[0] >= 27.0, each


def test_cli_writes_onnx_with_manifest(tiny_model_dirs, tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        str(tiny_model_dirs["bert"]), "--to", "onnx", "-o", str(out), "--seq-len", "32", "--no-check"
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    (artifact,) = manifest["artifacts"]
    assert artifact["backend"] == "onnx" and artifact["file"] == "model.onnx" and artifact["opset"] == 23
    assert artifact["bytes"] == (out / "model.onnx").stat().st_size
    assert (out / "manifest.json").is_file() and not (out / "parity.json").exists()


def test_sessions_leave_the_callers_float_state_alone(int8_onnx, backend, docstring_texts):
    """onnxruntime's set_denormal_as_zero turns FTZ/DAZ on for good in the thread creating the
    session; qexport's sessions hand the thread back as they found it (backends/onnx/cpu.py)."""
    from qexport.backends.onnx.cpu import NO_DENORMALS, flushing_denormals

    assert not flushing_denormals()
    session = backend.session(int8_onnx)
    inputs = {k: v[:1] for k, v in docstring_texts[1].items()}
    backend.run(int8_onnx, inputs, session=session)
    assert not flushing_denormals()
    assert np.float32(1e-39) * np.float32(2.0) > 0  # numpy still sees subnormals here
    assert (
        session.get_session_options().get_session_config_entry("session.set_denormal_as_zero")
        == NO_DENORMALS["session.set_denormal_as_zero"]
    )


def test_exact_floats_run_layer_norms_in_float64(tiny_model_dirs, backend, tmp_path):
    """onnxruntime's float32 LayerNormalization rounds apart from the IR's exact LayerNorm on about
    a third of the values. With the recipe's ``exact_floats`` (``int8-full``) a LayerNorm whose
    result is quantized next runs on doubles and is cast back once, which gives the IR's bits;
    the last one, read by no quantizer, and every LayerNorm of ``int8`` stay float32."""
    from qexport.backends.onnx.session import run_intermediates
    from qexport.reference.executor import run as reference_run

    graph = qexport.capture(tiny_model_dirs["bert"], seq_len=16)
    ids = np.random.default_rng(0).integers(1, 500, (4, 16))
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    for recipe, wide in (("int8-full", True), ("int8", False)):
        quantized = qexport.quantize(graph, recipe)
        assert bool(quantized.metadata.get("exact_floats")) == wide
        path = tmp_path / f"{recipe}.onnx"
        backend.lower(quantized, path)
        norms = [n for n in onnx.load(str(path)).graph.node if n.op_type == "LayerNormalization"]
        doubles = [n.input[0].endswith("_float64") for n in norms]
        assert doubles == [wide] * (len(norms) - 1) + [False], recipe
        # The embeddings' LayerNorm reads the same float inputs in both (Gathers and Adds).
        name = next(n.name for n in quantized.nodes if n.op is Op.LAYER_NORM)
        got = run_intermediates(path, batch, [name])[name]
        want = reference_run(quantized, batch, keep=[name])[name]
        assert np.array_equal(got, want) == wide, recipe


def test_per_channel_activations_quantize_like_the_ir_bit_for_bit():
    """A last-axis per-channel activation (int8-full's outlier-split Linear outputs) is written
    as float ops, not onnxruntime's slow per-axis QuantizeLinear; it must still be the IR's
    ``(clip(round(x / s) + zp) - zp) * s`` exactly: ties, clipped values, both zero points."""
    import onnxruntime as ort
    from onnx import helper

    from qexport.backends.onnx.backend import IR_VERSION, OPSET
    from qexport.backends.onnx.builder import OnnxBuilder
    from qexport.ir import arith
    from qexport.ir.graph import Graph, QDType, QuantSpec

    channels = 8
    scale = np.where(np.arange(channels) % 3 == 0, 0.25, 0.0371).astype(np.float32)
    zero = np.where(np.arange(channels) % 3 == 0, 200, 17).astype(np.int32)
    spec = QuantSpec(QDType.UINT8, scale, zero, axis=-1)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 64, channels)) * 20).astype(np.float32)
    x[0, :8] = ((np.arange(8)[:, None] + 0.5) * scale).astype(np.float32)  # ties (exact for s = 0.25)
    b = OnnxBuilder(Graph(inputs={}, outputs={}, nodes=[], constants={}, values={}))
    b.qdq_activation("v", "x", spec)
    b.prune({"v"})
    assert {n.op_type for n in b.nodes} >= {"Div", "Round", "Max", "Min", "Mul"}
    assert "QuantizeLinear" not in {n.op_type for n in b.nodes}  # nobody reads the integers
    io = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [4, 64, channels]) for n in ("x", "v")]
    model = helper.make_model(
        helper.make_graph(b.nodes, "t", io[:1], io[1:], list(b.initializers.values())),
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    expected = arith.dequantize(arith.quantize(x, spec), spec)
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        ours = session.run(None, {"x": x})[0]
        # equal values; a zero may keep the sign of the x it came from (-0.0 == 0.0)
        assert np.array_equal(ours, expected)


@pytest.mark.parametrize("bias_form", ["int32", "float"])
def test_int16_linears_are_the_irs_bit_for_bit(backend, tmp_path, bias_form):
    """onnxruntime has no int16 GEMM: an int16-input Linear is summed in two 8-bit halves on
    MatMulInteger and joined in float64 (backends/onnx/int16_linear.py). Every step the split
    can meet (both ends of int16, multiples of 256 and their neighbours) times the largest int8
    weights, with sums far past float32's 2**24, must give the IR's bits: optimized or not, and
    with the U8U8 kernels qexport's sessions use on x86 without VNNI."""
    from qexport.backends.onnx.backend import OnnxBackend
    from qexport.backends.onnx.session import new_session, session_options
    from qexport.ir.graph import QDType, QuantSpec
    from qexport.reference.executor import run as reference_run
    from tests.op_cases import VOCAB, CaseGraph

    width, channels, s_x = 16, 6, np.float32(2.0**-10)
    edges = [-32768, -32767, -32513, -32512, -257, -256, -255, -129, -128, -1, 0, 1, 127, 128, 255, 256]
    edges += [257, 32511, 32512, 32767]
    rng = np.random.default_rng(3)
    steps = rng.integers(-32768, 32768, (VOCAB, width))
    steps.flat[: len(edges)] = edges
    steps[-1] = 32767  # a row of the largest step ...
    g = CaseGraph()
    x = g.node(Op.GATHER, [g.const((steps * s_x).astype(np.float32)), "input_ids"])
    weights = rng.integers(-127, 128, (channels, width)).astype(np.int8)
    weights[0], weights[1] = 127, -127  # ... by the largest weights: |acc| = 6.7e7 > 2**24
    s_w = np.geomspace(1e-3, 0.3, channels).astype(np.float32)
    bias = rng.standard_normal(channels)  # in steps of s_x·s_w (int32) or real
    bias = (bias * 1e6).astype(np.int32) if bias_form == "int32" else bias.astype(np.float32)
    w_name, b_name = g.const(weights * s_w[:, None]), g.const(bias.astype(np.float32))
    g.graph.outputs["y"] = g.node(Op.LINEAR, [x, w_name, b_name])
    graph = g.graph
    graph.constants[w_name] = weights
    graph.quant[x] = QuantSpec(QDType.INT16, np.asarray(s_x), np.asarray(0, np.int32))
    graph.quant[w_name] = QuantSpec(QDType.INT8, s_w, np.zeros(channels, np.int32), axis=0)
    if bias_form == "int32":
        graph.constants[b_name] = bias
        graph.quant[b_name] = QuantSpec(
            QDType.INT32, (s_x * s_w).astype(np.float32), np.zeros(channels, np.int32), axis=0
        )
    graph.validate()
    assert [n["text"].split(" run as ")[0] for n in slow_path_notes(graph)] == ["onnx: 1 int16-input Linears"]
    path = tmp_path / "int16_linear.onnx"
    backend.lower(graph, path)
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("MatMulInteger") == 1
    plain = tmp_path / "plain.onnx"  # DequantizeLinear and a float MatMul: what the halves replace
    OnnxBackend(integer_linears=False).lower(graph, plain)
    sessions = [session_options(optimize=True), session_options(optimize=False), session_options()]
    sessions[2].add_session_config_entry("session.x64quantprecision", "1")  # U8U8, as on AVX2 CPUs
    feeds = [{"input_ids": (np.arange(8, dtype=np.int64)[None] + start) % VOCAB} for start in (0, 4)]
    for feed in feeds:
        want = reference_run(graph, feed)["y"]
        for options in sessions:
            got = backend.run(path, feed, session=new_session(str(path), options))["y"]
            assert np.array_equal(got, want), (bias_form, options.graph_optimization_level)
        assert not np.array_equal(backend.run(plain, feed)["y"], want)  # these inputs tell them apart
