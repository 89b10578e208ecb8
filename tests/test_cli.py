"""The command line: shape, outputs and the manifest."""

from __future__ import annotations

import json

import pytest

import qexport
from tests.conftest import run_cli


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"qexport {qexport.__version__}"


def test_help_teaches_the_shape_of_the_command():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "qexport SRC [--to" in result.stdout and "inspect" in result.stdout and "check" in result.stdout


@pytest.fixture(scope="module")
def converted(tiny_model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    result = run_cli(
        str(tiny_model_dirs["bert"]), "-o", str(out), "--seq-len", "32", "--to", "none", "--no-check"
    )
    assert result.returncode == 0, result.stderr
    return out


def test_convert_writes_qir_and_manifest(converted, tiny_model_dirs):
    assert sorted(p.name for p in converted.iterdir()) == ["manifest.json", "model.qir"]
    manifest = json.loads((converted / "manifest.json").read_text())
    assert manifest["source"]["path"] == str(tiny_model_dirs["bert"])
    assert len(manifest["source"]["sha256"]) == 64
    assert manifest["shapes"]["seq_len"] == 32
    assert manifest["shapes"]["inputs"]["input_ids"] == ["batch", "seq"]
    assert manifest["recipe"]["name"] == "int8"
    assert manifest["calibration"]["origin"] == "random-tokens"
    assert manifest["ir"]["bytes"] == (converted / "model.qir").stat().st_size
    assert manifest["artifacts"] == []


def test_check_verifies_hashes_and_rejects_a_modified_file(converted, tmp_path):
    assert run_cli("check", str(converted)).returncode == 0  # no artifacts: fp32 vs IR only, no gate
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(converted, copy)
    data = bytearray((copy / "model.qir").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.qir").write_bytes(bytes(data))
    result = run_cli("check", str(copy))
    assert result.returncode == 2 and "sha256 does not match" in result.stderr


def test_inspect_prints_ops_shapes_and_names(converted):
    result = run_cli("inspect", str(converted / "model.qir"), "--full")
    assert result.returncode == 0, result.stderr
    assert "encoder.layer.1.intermediate.dense" in result.stdout
    assert "input_ids: int64[batch, seq]" in result.stdout
    assert "Linear×" in result.stdout


def test_conversion_is_deterministic(converted, tiny_model_dirs, tmp_path):
    again = tmp_path / "again"
    args = ("-o", str(again), "--seq-len", "32", "--to", "none", "--no-check")
    assert run_cli(str(tiny_model_dirs["bert"]), *args).returncode == 0
    assert (again / "model.qir").read_bytes() == (converted / "model.qir").read_bytes()
    assert (again / "manifest.json").read_bytes() == (converted / "manifest.json").read_bytes()


def test_unknown_backend_names_the_available_ones(tiny_model_dirs, tmp_path):
    result = run_cli(str(tiny_model_dirs["bert"]), "--to", "coreml", "-o", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "unknown backend 'coreml'" in result.stderr and "available" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--to", "torch", "--torch-gemm", "int4"), "--torch-gemm must be auto, int8 or float, got 'int4'"),
        (("--to", "onnx", "--torch-gemm", "int8"), "--torch-gemm applies to the torch backend"),
        (("--to", "onnx", "--onnx-linears", "fast"), "--onnx-linears must be integer or qdq, got 'fast'"),
        (("--to", "torch", "--onnx-linears", "qdq"), "--onnx-linears applies to the onnx backend"),
    ],
)
def test_a_backend_flag_is_checked_before_any_work(tiny_model_dirs, tmp_path, args, message):
    out = tmp_path / "out"
    result = run_cli(str(tiny_model_dirs["bert"]), *args, "-o", str(out), "--seq-len", "16")
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
