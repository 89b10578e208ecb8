"""Issue 24: every `bert.pt` people have converts with the default command and passes parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import qexport
from qexport.errors import SourceError
from qexport.frontend.source import sniff
from tests.conftest import run_cli


def _bert(tiny_model_dirs, **overrides):
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(tiny_model_dirs["bert"], **overrides)
    return BertModel.from_pretrained(tiny_model_dirs["bert"], config=config).eval()


def _tokens(seq: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 500, (1, seq), generator=torch.Generator().manual_seed(3))
    return ids, torch.ones(1, seq, dtype=torch.long)


def _save(kind: str, tiny_model_dirs, path: Path) -> Path:
    """Write the model the way users ship it; the file name never says what it is."""
    ids, mask = _tokens()
    if kind == "torchscript":
        torch.jit.trace(_bert(tiny_model_dirs), (ids, mask), strict=False).save(str(path))
    elif kind == "export-modeloutput":
        program = torch.export.export(_bert(tiny_model_dirs), (), {"input_ids": ids, "attention_mask": mask})
        torch.export.save(program, str(path))
    elif kind == "export-tuple":
        program = torch.export.export(_bert(tiny_model_dirs, return_dict=False), (ids, mask))
        torch.export.save(program, str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torchscript", "export-modeloutput", "export-tuple"])
def test_traced_and_exported_files_convert_to_every_backend(kind, tiny_model_dirs, tmp_path):
    src = _save(kind, tiny_model_dirs, tmp_path / "bert.pt")  # .pt whatever the content
    out = tmp_path / "out"
    result = run_cli(str(src), "--to", "tflite,onnx,torch", "-o", str(out), "--seq-len", "32")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["kind"] == ("torchscript" if kind == "torchscript" else "pt2")
    assert json.loads((out / "parity.json").read_text())["passed"] is True
    assert {a["backend"] for a in manifest["artifacts"]} == {"tflite", "onnx", "torch"}


def test_files_are_recognised_by_content(tiny_model_dirs, tmp_path):
    ts = _save("torchscript", tiny_model_dirs, tmp_path / "a.pt2")
    ep = _save("export-tuple", tiny_model_dirs, tmp_path / "b.bin")
    torch.save({"w": torch.zeros(2)}, tmp_path / "c.pt2")
    (tmp_path / "d.pt").write_bytes(b"not a model at all")
    assert [sniff(p) for p in (ts, ep, tmp_path / "c.pt2", tmp_path / "d.pt")] == [
        "torchscript",
        "pt2",
        "torch-save",
        "unknown",
    ]


def test_a_rebuilt_module_computes_what_the_file_computes(tiny_model_dirs, tmp_path):
    src = _save("torchscript", tiny_model_dirs, tmp_path / "bert.pt")
    graph = qexport.capture(src, seq_len=16)
    ids, mask = _tokens()
    mask[0, 12:] = 0
    traced = torch.jit.load(str(src))
    with torch.no_grad():
        expected = traced(ids, mask)["last_hidden_state"].numpy()
    got = qexport.run_reference(graph, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    assert np.abs(got["last_hidden_state"] - expected).max() < 1e-4


def test_a_rebuild_that_cannot_match_says_to_pass_config(tiny_model_dirs, tmp_path):
    src = _save("torchscript", tiny_model_dirs, tmp_path / "bert.pt")
    wrong = json.loads((tiny_model_dirs["bert"] / "config.json").read_text())
    wrong["hidden_act"] = "relu"
    (tmp_path / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(SourceError, match="does not compute what the file computes"):
        qexport.capture(src, seq_len=16, config=tmp_path / "config.json")


def test_optional_inputs_take_the_source_defaults(tiny_model_dirs, tmp_path):
    graph = qexport.capture(tiny_model_dirs["bert"], seq_len=16)
    ids, mask = (t.numpy() for t in _tokens())
    full = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    expected = qexport.run_reference(graph, full)["last_hidden_state"]
    assert np.array_equal(qexport.run_reference(graph, {"input_ids": ids})["last_hidden_state"], expected)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_ids=np.repeat(ids, 4, axis=0), attention_mask=np.repeat(mask, 4, axis=0))
    quantized = qexport.quantize(graph, "int8", calibration=calib)
    assert quantized.metadata["calibration"]["samples"] == 4
