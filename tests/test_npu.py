"""Full-integer files for NPUs (--for npu): what Ethos-U takes, what LiteRT computes, accuracy.

Measured on all-MiniLM-L6-v2 with held-out docstring sentences at seq 128, and on the tiny
random-init BERT-family models; vela (PyPI ``ethos-u-vela``) runs as a subprocess.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import qexport
from qexport.backends.tflite import TfliteBackend
from qexport.quant.calibration import random_tokens
from tests.conftest import run_cli
from tests.test_vela import vela


def npu_share(stdout: str) -> float:
    match = re.search(r"NPU operators = \d+ \(([\d.]+)%\)", stdout)
    assert match, stdout[-2000:]
    return float(match.group(1))


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    keep = mask[..., None].astype(np.float64)
    return (hidden * keep).sum(1) / keep.sum(1)


def sqnr(ours: np.ndarray, ref: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ours - ref) ** 2)))


@pytest.fixture(scope="module")
def minilm_npu(minilm_npu_graph, tmp_path_factory):
    """(graph, .tflite path) for npu-int16, calibrated on 128 sentences."""
    path = tmp_path_factory.mktemp("npu") / "model.tflite"
    TfliteBackend().lower(minilm_npu_graph, path)
    return minilm_npu_graph, path


def test_every_tensor_between_ops_is_integer(minilm_npu):
    from ai_edge_litert import schema_py_generated as fb

    _, path = minilm_npu
    model = fb.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    graph = model.subgraphs[0]
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    outputs = set(graph.outputs)
    for op in graph.operators:
        name = names[model.operatorCodes[op.opcodeIndex].builtinCode]
        if name == "DEQUANTIZE":
            assert set(op.outputs) <= outputs, "a DEQUANTIZE inside the graph"
            continue
        for index in [*op.inputs, *op.outputs]:
            tensor_type = types[graph.tensors[index].type]
            assert tensor_type in ("INT8", "INT16", "INT32", "INT64"), (name, graph.tensors[index].name)


def test_ethos_u_takes_the_file(minilm_npu, tmp_path):
    """U85: all but the two output DEQUANTIZEs. U55: its BATCH_MATMUL takes int8 only, so the
    12 int16 attention matmuls and the 3 GATHERs (no U55 kernel) stay on the host."""
    _, path = minilm_npu
    u85 = vela(path, tmp_path / "u85")
    assert u85.returncode == 0, u85.stderr[-2000:]
    assert npu_share(u85.stdout) >= 99.0
    u55 = vela(path, tmp_path / "u55", "ethos-u55-128")
    assert u55.returncode == 0, u55.stderr[-2000:]
    assert npu_share(u55.stdout) >= 95.0
    fallbacks = set(re.findall(r"operator: (\w+), ofm", u55.stdout))
    assert fallbacks <= {"BATCH_MATMUL", "GATHER", "DEQUANTIZE"}


def test_litert_default_and_reference_kernels_agree_with_the_ir(minilm_npu, docstring_texts):
    from ai_edge_litert.interpreter import OpResolverType

    graph, path = minilm_npu
    held_out = {k: v[:6] for k, v in docstring_texts[1].items()}
    simulated = qexport.run_reference(graph, held_out)
    backend = TfliteBackend()
    for kwargs in ({}, {"experimental_op_resolver_type": OpResolverType.BUILTIN_REF}):
        out = backend.run(path, held_out, interpreter=backend.interpreter(path, **kwargs))
        keep = held_out["attention_mask"][..., None] != 0
        hidden = sqnr(out["last_hidden_state"] * keep, simulated["last_hidden_state"] * keep)
        assert hidden >= 30.0, (kwargs, hidden)
        assert sqnr(out["pooler_output"], simulated["pooler_output"]) >= 30.0, kwargs


def test_accuracy_and_size_against_fp32(minilm_npu, minilm, minilm_dir, docstring_texts):
    """16-bit activations: cosine >= 0.999 and >= 28 dB, mean-pooled over real tokens."""
    _, path = minilm_npu
    held_out = {k: v[:48] for k, v in docstring_texts[1].items()}
    reference = qexport.run_reference(minilm[0].graph, held_out, simulate=False)
    out = TfliteBackend().run(path, held_out)
    mask = held_out["attention_mask"]
    ours, ref = pooled(out["last_hidden_state"], mask), pooled(reference["last_hidden_state"], mask)
    cosine = np.sum(ours * ref, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.mean() >= 0.999 and sqnr(ours, ref) >= 28.0, (cosine.mean(), sqnr(ours, ref))
    safetensors = (minilm_dir / "model.safetensors").stat().st_size
    assert path.stat().st_size <= 0.27 * safetensors


@pytest.mark.parametrize("name", ["bert", "bert-cls", "distilbert", "electra"])
def test_bert_family_models_lower_whole(name, tiny_model_dirs, tmp_path):
    """int8 kernels (softmax above all) round a step differently from the IR's float-then-
    requantize now and then; on a 3-logit output one step is ~30 dB, hence 20 dB for 8 bits."""
    graph = qexport.capture(tiny_model_dirs[name], seq_len=16)
    for recipe, agreement_db in (("npu-int16", 30.0), ("npu-int8", 20.0)):
        calib = random_tokens(graph, 16, samples=8)
        quantized = qexport.quantize(graph, recipe, calibration=calib)
        path = tmp_path / f"{recipe}.tflite"
        TfliteBackend().lower(quantized, path)
        inputs = {k: v[:2] for k, v in calib.items()}
        simulated = qexport.run_reference(quantized, inputs)
        out = TfliteBackend().run(path, inputs)
        for key, value in simulated.items():
            assert sqnr(out[key], value) >= agreement_db, (recipe, key)
        result = vela(path, tmp_path / f"vela-{recipe}")
        assert result.returncode == 0 and npu_share(result.stdout) >= 95.0, result.stdout[-1500:]


def test_mixed_recipe_records_its_sensitivity_table(tiny_model_dirs):
    graph = qexport.capture(tiny_model_dirs["bert"], seq_len=16)
    quantized = qexport.quantize(graph, "npu-mixed", calibration=random_tokens(graph, 16, samples=8))
    table = quantized.metadata["sensitivity"]
    assert [row["role"] for row in table]  # every role tried, each with its measured SQNR
    chosen = {row["role"] for row in table if row["int8"]}
    assert chosen == set(quantized.metadata["integer_form"]["int8_roles"])
    assert all(row["sqnr_db"] >= 25.0 for row in table if row["int8"])


def test_an_op_without_integer_form_fails_before_writing(tiny_model_dirs, tmp_path):
    """MobileBERT's embedding Pad has no integer form: exit 2, op and node named, nothing written."""
    out = tmp_path / "out"
    result = run_cli(
        str(tiny_model_dirs["mobilebert"]),
        "--for",
        "npu",
        "--to",
        "tflite",
        "--seq-len",
        "16",
        "-o",
        str(out),
    )
    assert result.returncode == 2, result.stderr
    assert "Pad" in result.stderr and "embeddings.pad" in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_integer_io_writes_integer_outputs_vela_places_whole(tiny_model_dirs, tmp_path):
    """--integer-io drops the output DEQUANTIZEs: every operator on the U85; the manifest
    carries the outputs' params, and the checker reads the integers through them."""
    import json

    out = tmp_path / "out"
    result = run_cli(
        str(tiny_model_dirs["bert"]), "--for", "npu", "--integer-io", "--to", "tflite",
        "--seq-len", "16", "-o", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    (artifact,) = manifest["artifacts"]
    params = artifact["outputs"]["last_hidden_state"]
    assert params["dtype"] == "int16" and params["zero_point"] == 0 and params["scale"] > 0
    u85 = vela(out / artifact["file"], tmp_path / "vela")
    assert npu_share(u85.stdout) == 100.0, u85.stdout[-1500:]


def test_integer_io_refuses_a_recipe_with_float_ops(tiny_model_dirs, tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        str(tiny_model_dirs["bert"]), "--recipe", "int8", "--integer-io", "--to", "tflite",
        "--seq-len", "16", "-o", str(out),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "LayerNorm" in result.stderr
    assert not out.exists() or not any(out.iterdir())
