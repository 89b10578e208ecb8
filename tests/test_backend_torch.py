"""PyTorch backend: a .pt2 that plain torch loads, with the IR's int8 weights, on real MiniLM."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import qexport
from qexport.backends import get
from qexport.backends.torch import TorchBackend, ops
from qexport.backends.torch import gemm as torch_gemm
from qexport.backends.torch.module import IRModule, buffer_name
from qexport.errors import QExportError
from qexport.ir.ops import Op
from qexport.reference.kernels import KERNELS
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def backend():
    return get("torch")


@pytest.fixture(scope="module")
def int8_pt2(minilm_int8_file):
    return minilm_int8_file("torch")[0]


def test_loads_and_runs_in_a_process_without_qexport(int8_pt2, docstring_texts, tmp_path):
    np.savez(tmp_path / "x.npz", **{k: v[:8] for k, v in docstring_texts[1].items()})
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        sys.modules["qexport"] = None  # any import of qexport would now fail
        module = torch.export.load({str(int8_pt2)!r}).module()
        data = np.load({str(tmp_path / "x.npz")!r})
        for batch, seq in [(1, 16), (3, 57), (8, 128)]:
            out = module(**{{k: torch.from_numpy(data[k][:batch, :seq]) for k in data.files}})
            assert out["last_hidden_state"].shape == (batch, seq, 384), out["last_hidden_state"].shape
            assert torch.isfinite(out["last_hidden_state"]).all()
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_activation_params_and_biases_are_the_irs_bit_for_bit(int8_pt2, minilm_int8):
    """Beyond the Linear weights (tests/test_backends.py): static params and the float biases."""
    state = torch.export.load(str(int8_pt2)).state_dict
    dense = "encoder.layer.1.intermediate.dense"
    for name, spec in minilm_int8.quant.items():
        if spec.dynamic:
            continue
        scale, zero_point = buffer_name(f"{name}/scale"), buffer_name(f"{name}/zero_point")
        assert state[scale].numpy().tobytes() == spec.scale.tobytes(), name
        if zero_point in state:
            assert np.array_equal(state[zero_point].numpy(), spec.zero_point), name
        else:  # symmetric: the zero point is implied
            assert not spec.zero_point.any(), name
    bias = f"{dense}.bias"
    assert np.array_equal(state[buffer_name(bias)].numpy(), minilm_int8.constants[bias])


def _torch_kernel(op: Op):
    """The reference kernel of ``op`` replaced by the torch function the program runs."""

    def run(xs, attrs, dims):
        args = [torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x for x in xs]
        return ops.TORCH_OPS[op](args, attrs, dims).numpy()

    return run


def test_lowering_is_exact_given_torchs_float_kernels(
    int8_pt2, backend, minilm_int8, docstring_texts, monkeypatch
):
    """Everything the backend adds is exact: with torch's own softmax, tanh, float matmul and
    last LayerNorm in the reference executor, the .pt2 equals the IR simulation bit for bit.
    What separates it from the plain IR (the test above) is those float kernels and nothing
    else; its GELUs and its other LayerNorms, each read by a quantizer, run the IR's exact
    float64 forms."""
    exact = IRModule(minilm_int8).exact
    norms = [n for n in minilm_int8.nodes if n.op is Op.LAYER_NORM]
    assert list(exact.values()).count(Op.GELU) == 6
    assert [n.name for n in norms if n.name not in exact] == ["encoder.layer.5.output.LayerNorm"]
    for op in (Op.SOFTMAX, Op.MATMUL, Op.TANH):
        monkeypatch.setitem(KERNELS, op, _torch_kernel(op))
    # The kernel is told which node it runs by nothing but its attrs, so pick the last one by those.
    last, exact_norm, torch_norm = id(norms[-1].attrs), KERNELS[Op.LAYER_NORM], _torch_kernel(Op.LAYER_NORM)
    monkeypatch.setitem(
        KERNELS, Op.LAYER_NORM, lambda xs, a, d: (torch_norm if id(a) == last else exact_norm)(xs, a, d)
    )
    batch = {k: v[:8] for k, v in docstring_texts[1].items()}
    ours, ir = backend.run(int8_pt2, batch), qexport.run_reference(minilm_int8, batch)
    assert ours.keys() == ir.keys()
    for name in ir:
        assert np.array_equal(ours[name], ir[name]), name


def test_a_full_integer_program_computes_the_irs_integers(tiny_model_dirs, backend, tmp_path):
    """Where a quantizer reads the softmax (every full-integer recipe), the program runs it in
    float64 as the IR does: torch's float32 softmax now and then rounds an 8-bit step the other
    way, and in 8 bits each layer after it grows the flip (learned MiniLM npu-int8: 35.2 dB from
    its IR before, bit-exact on 200 sentences since)."""
    from qexport.quant.calibration import random_tokens

    graph = qexport.capture(tiny_model_dirs["bert"], seq_len=16)
    quantized = qexport.quantize(graph, "npu-int8", calibration=random_tokens(graph, 16, samples=8))
    softmaxes = [n.name for n in quantized.nodes if n.op is Op.SOFTMAX]
    assert [name for name, op in IRModule(quantized).exact.items() if op is Op.SOFTMAX] == softmaxes
    backend.lower(quantized, tmp_path / "model.pt2")
    inputs = random_tokens(graph, 16, samples=24)
    ours, ir = backend.run(tmp_path / "model.pt2", inputs), qexport.run_reference(quantized, inputs)
    for name in ir:
        assert np.array_equal(ours[name], ir[name]), name


def test_int8_and_float_gemms_compute_the_same_numbers(minilm_int8, docstring_texts):
    """``_int_mm``'s int32 sums and float32 sums of the same integers agree exactly (every partial
    sum of this model stays below 2**24), so the choice of GEMM is a speed choice only."""
    batch = {k: torch.from_numpy(v[:2, :48]) for k, v in docstring_texts[1].items()}
    with torch.no_grad():
        by_int = IRModule(minilm_int8, gemm="int8").eval()(**batch)
        by_float = IRModule(minilm_int8, gemm="float").eval()(**batch)
    for name in by_int:
        assert torch.equal(by_int[name], by_float[name]), name


@pytest.mark.parametrize("gemm", ["int8", "float"])
def test_the_program_runs_the_gemm_asked_for(tiny_model_dirs, tmp_path, gemm):
    graph = qexport.quantize(qexport.capture(tiny_model_dirs["bert"], seq_len=16), "int8")
    facts = TorchBackend(gemm=gemm).lower(graph, tmp_path / "m.pt2")
    program = torch.export.load(str(tmp_path / "m.pt2"))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert facts["gemm"] == gemm and ("aten._int_mm.default" in targets) == (gemm == "int8")
    assert facts["notes"][0]["text"].startswith(
        "torch: model.pt2 multiplies with torch._int_mm"
        if gemm == "int8"
        else "torch: model.pt2 multiplies in float32"
    )


def test_auto_gemm_is_int8_only_where_int_mm_has_a_vnni_kernel(monkeypatch):
    monkeypatch.setattr(torch_gemm, "is_x86", lambda: True)
    for flags, expected in [
        ({"avx2", "fma"}, "float"),  # AVX2 only: _int_mm is a scalar loop
        ({"avx2", "avx512f", "avx512_vnni"}, "int8"),
        ({"avx2", "avx512f", "avx512_vnni", "amx_int8"}, "int8"),
        (None, "float"),  # flags unreadable: the choice that is never catastrophic
    ]:
        monkeypatch.setattr(torch_gemm, "cpu_flags", lambda flags=flags: flags)
        assert torch_gemm.resolve_gemm("auto") == expected, flags
    assert torch_gemm.resolve_gemm("int8") == "int8"  # a pinned choice holds on any CPU
    with pytest.raises(QExportError, match="one of auto, int8, float; got 'int4'"):
        torch_gemm.resolve_gemm("int4")


def test_fp32_recipe_gives_a_float_program(tiny_model_dirs, backend, tmp_path):
    graph = qexport.capture(tiny_model_dirs["bert"], seq_len=16)
    assert not IRModule(graph).exact  # no quantizer reads them: torch's float32 GELU and LayerNorm
    backend.lower(graph, tmp_path / "fp32.pt2")
    ids = np.random.default_rng(0).integers(1, 500, (2, 16))
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    ours = backend.run(tmp_path / "fp32.pt2", inputs)["last_hidden_state"]
    assert np.abs(ours - qexport.run_reference(graph, inputs)["last_hidden_state"]).max() < 1e-4


def test_cli_records_the_gemm_and_tells_the_user(tiny_model_dirs, tmp_path):
    out = tmp_path / "out"
    args = ("--to", "torch", "--torch-gemm", "float", "-o", str(out), "--seq-len", "16", "--no-check")
    result = run_cli(str(tiny_model_dirs["bert"]), *args)
    assert result.returncode == 0, result.stderr
    (artifact,) = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert artifact["gemm"] == "float"
    assert "model.pt2 multiplies in float32" in result.stderr.replace("\n", " ")
