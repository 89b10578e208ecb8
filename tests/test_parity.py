"""The parity checker on real MiniLM: passes at the defaults, catches a broken artifact, refuses bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qexport.backends.onnx.cpu import exact_session_config
from qexport.convert import ConvertOptions, convert, sha256_file
from qexport.errors import QExportError
from qexport.frontend.text import read_lines, tokenize
from qexport.parity.check import EVAL_TEXT, Thresholds, check_outdir
from tests.conftest import DOCSTRINGS, run_cli


@pytest.fixture(scope="module")
def converted(minilm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    calib = root / "calib.txt"
    calib.write_text("\n".join(read_lines(DOCSTRINGS)[:128]) + "\n")
    out = root / "out"
    manifest = convert(minilm_dir, out, ConvertOptions(to=["onnx", "torch"], calib=calib))
    doc = check_outdir(out, captured=manifest.pop("_captured"))
    return out, doc


def test_minilm_passes_at_the_default_thresholds(converted):
    out, doc = converted
    assert doc["passed"] and doc["thresholds"] == {"min_cos": 0.995, "min_sqnr": 20.0, "min_agreement": 0.99}
    assert json.loads((out / "parity.json").read_text())["passed"] is True
    kinds = {(r["reference"], r["candidate"]) for r in doc["comparisons"]}
    assert {
        ("torch_fp32", "ir_float"),
        ("torch_fp32", "ir_simulated"),
        ("ir_simulated", "onnx"),
        ("torch_fp32", "onnx"),
        ("ir_simulated", "torch"),
        ("torch_fp32", "torch"),
        ("onnx", "torch"),
    } <= kinds
    assert doc["evaluation"]["samples"] == 72 and doc["calibration"]["samples"] == 128


def test_json_numbers_agree_with_an_independent_recomputation(converted, minilm_dir):
    import onnxruntime as ort
    from transformers import AutoModel

    out, doc = converted
    inputs = tokenize(
        read_lines(EVAL_TEXT), minilm_dir, 128, ["input_ids", "attention_mask", "token_type_ids"]
    )
    options = ort.SessionOptions()
    for key, value in exact_session_config().items():  # exact U8U8 kernels on x86 without VNNI
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    cosines, signal, noise = [], 0.0, 0.0
    for i in range(len(inputs["input_ids"])):
        one = {k: v[i : i + 1] for k, v in inputs.items()}
        ours = session.run(["last_hidden_state"], one)[0][0]
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in one.items()}).last_hidden_state[0].numpy()
        real = one["attention_mask"][0] == 1
        a, r = ours[real].astype(np.float64).ravel(), ref[real].astype(np.float64).ravel()
        cosines.append(a @ r / np.linalg.norm(a) / np.linalg.norm(r))
        signal, noise = signal + r @ r, noise + (a - r) @ (a - r)
    row = next(
        r
        for r in doc["comparisons"]
        if (r["reference"], r["candidate"], r["output"]) == ("torch_fp32", "onnx", "last_hidden_state")
    )
    assert row["cos_mean"] == pytest.approx(np.mean(cosines), abs=1e-4)
    assert row["cos_min"] == pytest.approx(np.min(cosines), abs=1e-4)
    assert row["sqnr_db"] == pytest.approx(10 * np.log10(signal / noise), abs=0.05)


def test_junit_xml_has_one_case_per_backend_and_output(converted):
    out, _ = converted
    root = ET.parse(out / "junit.xml").getroot()
    cases = root.findall("./testsuite/testcase")
    names = {f"{b}.{o}" for b in ("onnx", "torch") for o in ("last_hidden_state", "pooler_output")}
    assert root.tag == "testsuites" and {c.get("name") for c in cases} == names
    assert all(c.find("failure") is None for c in cases)
    assert "PASS" in (out / "report.md").read_text()


def _rehash(out: Path, file: str) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in [manifest["ir"], *manifest["artifacts"]]:
        if entry["file"] == file:
            entry["sha256"], entry["bytes"] = sha256_file(out / file), (out / file).stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def broken(converted, tmp_path_factory):
    """A copy of OUT whose layer-2 FFN weight scale is x4 in the ONNX file: (out, check before
    the manifest hash is updated, check after)."""
    out = tmp_path_factory.mktemp("broken") / "out"
    shutil.copytree(converted[0], out)
    model = onnx.load(str(out / "model.onnx"))
    name = "encoder.layer.2.intermediate.dense.weight_scale"
    init = next(t for t in model.graph.initializer if t.name == name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(4), name))
    onnx.save(model, str(out / "model.onnx"))
    tampered = run_cli("check", str(out))
    _rehash(out, "model.onnx")
    held_out = out.parent / "held_out.txt"  # 16 sentences: a broken scale shows on any of them
    held_out.write_text("\n".join(read_lines(DOCSTRINGS)[128:144]) + "\n")
    return out, tampered, run_cli("check", str(out), "--data", str(held_out))  # bisects by default


def test_a_tampered_artifact_is_bad_input(broken):
    _, tampered, _ = broken
    assert tampered.returncode == 2 and "sha256" in tampered.stderr


def test_a_broken_weight_scale_fails_the_gate(broken):
    out, _, result = broken
    assert result.returncode == 1, result.stderr
    doc = json.loads((out / "parity.json").read_text())
    assert not doc["passed"]
    lowering = next(
        r for r in doc["comparisons"] if (r["reference"], r["candidate"]) == ("ir_simulated", "onnx")
    )
    assert lowering["sqnr_db"] < 15


def test_output_without_manifest(tmp_path):
    with pytest.raises(QExportError, match=r"no manifest\.json"):
        check_outdir(tmp_path)


def test_evaluation_data_with_the_wrong_shape(converted, tmp_path):
    np.savez(tmp_path / "eval.npz", input_ids=np.ones((2, 3, 4), np.int64))
    result = run_cli("check", str(converted[0]), "--data", str(tmp_path / "eval.npz"))
    assert result.returncode == 2 and "input_ids has shape [2, 3, 4]" in result.stderr
    assert "expected integer [samples, seq]" in result.stderr  # brackets in messages are not markup


def test_bisector_names_the_broken_layer_as_a_lowering_error(broken):
    out, _, result = broken
    assert result.returncode == 1, result.stderr
    verdict = json.loads((out / "parity.json").read_text())["bisect"]["onnx"]["verdict"]
    assert verdict["kind"] == "lowering" and verdict["layer"] == "encoder.layer.2", verdict
    assert verdict["value"].startswith("encoder.layer.2.intermediate.dense")
    assert (out / "bisect_onnx.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![per-layer SQNR](bisect_onnx.png)" in (out / "report.md").read_text()


def test_bisector_names_an_over_aggressive_recipe_as_quantization(minilm_dir, tmp_path):
    recipe = tmp_path / "aggressive.toml"
    recipe.write_text('base = "int8"\nquantize_op_inputs = ["LayerNorm", "Softmax"]\nsmooth_alpha = 0.8\n')
    out = tmp_path / "out"
    manifest = convert(minilm_dir, out, ConvertOptions(to=["onnx"], recipe=str(recipe)))
    doc = check_outdir(out, captured=manifest.pop("_captured"), bisect=True)
    assert not doc["passed"]
    verdict = doc["bisect"]["onnx"]["verdict"]
    assert verdict["kind"] == "quantization" and verdict["layer"] == "encoder.layer.0", verdict
    assert verdict["value"].startswith("encoder.layer.0.attention")


def test_thresholds_come_from_flags_then_pyproject_then_defaults(tmp_path):
    from qexport.errors import UsageError
    from qexport.parity.check import load_thresholds

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.qexport.check]\nmin_cos = 0.999\nmin_sqnr = 30\n")
    assert load_thresholds(pyproject) == Thresholds(0.999, 30.0, 0.99)
    assert load_thresholds(pyproject, min_sqnr=10.0, min_cos=None) == Thresholds(0.999, 10.0, 0.99)
    assert load_thresholds(tmp_path / "absent.toml") == Thresholds()
    pyproject.write_text("[tool.qexport.check]\nmin_cosine = 1\n")
    with pytest.raises(UsageError, match="unknown keys"):
        load_thresholds(pyproject)


def test_junit_xml_follows_the_junit_schema(converted):
    root = ET.parse(converted[0] / "junit.xml").getroot()
    assert root.tag == "testsuites"
    for suite in root.findall("testsuite"):
        assert {"name", "tests", "failures", "errors"} <= set(suite.attrib)
        assert int(suite.get("tests")) == len(suite.findall("testcase"))
        for case in suite.findall("testcase"):
            assert {"name", "classname", "time"} <= set(case.attrib)
            assert all(child.tag in {"properties", "failure"} for child in case)


def test_assert_parity_helper(tiny_model_dirs, tmp_path):
    """On a tiny BERT (each check of MiniLM costs ~40 s; the helper only passes thresholds on)."""
    from qexport.testing import assert_parity

    out = tmp_path / "out"
    convert(tiny_model_dirs["bert"], out, ConvertOptions(to=["onnx"], seq_len=16))
    assert assert_parity(out, min_cos=0.9, min_sqnr=10)["passed"]
    with pytest.raises(AssertionError, match=r"onnx\.last_hidden_state"):
        assert_parity(out, min_sqnr=150)
