"""Every accepted source type loads; every bad input is one clear line, exit 2, nothing in OUT."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import qexport
from qexport.errors import CaptureError, SourceError, UnsafeSourceError
from tests.conftest import run_cli


def assert_clean_failure(result, out: Path, *needles: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, OUT absent or untouched."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())
    assert not list(out.parent.glob(f".{out.name}.staging-*"))


# ------------------------------------------------------------ accepted sources


def test_state_dict_with_config(tiny_model_dirs, tmp_path):
    src = tiny_model_dirs["bert"]
    model = torch.nn.Module()
    from transformers import BertModel

    model = BertModel.from_pretrained(src)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    graph = qexport.capture(tmp_path / "weights.pt", seq_len=16, config=src / "config.json")
    assert "encoder.layer.1.output.dense" in {n.name for n in graph.nodes}


def test_state_dict_without_config_says_what_to_pass(tiny_model_dirs, tmp_path):
    shutil.copy(tiny_model_dirs["bert"] / "model.safetensors", tmp_path / "w.safetensors")
    with pytest.raises(SourceError, match="--config"):
        qexport.capture(tmp_path / "w.safetensors")


def test_pickled_module_loads_only_with_trust_pickle(tiny_model_dirs, tmp_path):
    from transformers import BertModel

    torch.save(BertModel.from_pretrained(tiny_model_dirs["bert"]), tmp_path / "bert.pt")
    with pytest.raises(UnsafeSourceError, match="--trust-pickle"):
        qexport.capture(tmp_path / "bert.pt")
    graph = qexport.capture(tmp_path / "bert.pt", seq_len=16, trust_pickle=True)
    assert list(graph.outputs) == ["last_hidden_state", "pooler_output"]


class TinyEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.proj = torch.nn.Linear(16, 16)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, input_ids):
        return self.norm(torch.nn.functional.gelu(self.proj(self.embed(input_ids))))


def test_torch_export_program(tmp_path):
    model = TinyEncoder().eval()
    ids = torch.randint(0, 50, (2, 8))
    torch.export.save(torch.export.export(model, (ids,)), tmp_path / "m.pt2")
    graph = qexport.capture(tmp_path / "m.pt2")
    assert [n.name for n in graph.nodes] == ["embed", "proj", "gelu", "norm"]
    with torch.no_grad():
        expected = model(ids).numpy()
    assert np.abs(qexport.run_reference(graph, {"input_ids": ids.numpy()})["output"] - expected).max() < 1e-5


def test_custom_code_is_refused(tiny_model_dirs, tmp_path):
    src = tmp_path / "custom"
    shutil.copytree(tiny_model_dirs["bert"], src)
    config = json.loads((src / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafeSourceError, match="custom code"):
        qexport.capture(src)


# ------------------------------------------------------------ bad inputs via the CLI


def test_missing_file(tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(run_cli(str(tmp_path / "nope.pt"), "-o", str(out)), out, "no such file")


def test_directory_without_config(tmp_path):
    (tmp_path / "model").mkdir()
    out = tmp_path / "out"
    assert_clean_failure(run_cli(str(tmp_path / "model"), "-o", str(out)), out, "no config.json")


def test_truncated_pt(tiny_model_dirs, tmp_path):
    from transformers import BertModel

    torch.save(BertModel.from_pretrained(tiny_model_dirs["bert"]).state_dict(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    result = run_cli(
        str(tmp_path / "w.pt"), "--config", str(tiny_model_dirs["bert"] / "config.json"), "-o", str(out)
    )
    assert_clean_failure(result, out, "truncated")


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_does_not_run_without_trust_pickle(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"weights": _Payload(str(marker))}, fh)
    out = tmp_path / "out"
    assert_clean_failure(run_cli(str(tmp_path / "evil.pt"), "-o", str(out)), out, "--trust-pickle")
    assert not marker.exists()


class OddOp(torch.nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=-1).values


class WithOddOp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.odd = OddOp()

    def forward(self, input_ids):
        return self.odd(self.embed(input_ids))


def test_op_outside_the_ir_names_op_and_module(tmp_path):
    ids = torch.randint(0, 50, (2, 8))
    torch.export.save(torch.export.export(WithOddOp().eval(), (ids,)), tmp_path / "odd.pt2")
    with pytest.raises(CaptureError, match=r"aten\.sort.*module odd"):
        qexport.capture(tmp_path / "odd.pt2")
    out = tmp_path / "out"
    assert_clean_failure(run_cli(str(tmp_path / "odd.pt2"), "-o", str(out)), out, "aten.sort", "module odd")


def test_seq_len_beyond_max_position_embeddings(tiny_model_dirs, tmp_path):
    out = tmp_path / "out"
    result = run_cli(str(tiny_model_dirs["bert"]), "--seq-len", "100", "-o", str(out))
    assert_clean_failure(result, out, "max_position_embeddings (64)")


def test_unwritable_output(tiny_model_dirs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = blocker / "out"
    result = run_cli(str(tiny_model_dirs["bert"]), "-o", str(out))
    assert result.returncode == 2 and "cannot write" in result.stderr
    assert len([x for x in result.stderr.splitlines() if x.strip()]) == 1
    assert blocker.read_text() == "not a directory"


def test_corrupted_qir(tmp_path):
    (tmp_path / "bad.qir").write_bytes(b"PK\x03\x04 definitely not a qir")
    result = run_cli("inspect", str(tmp_path / "bad.qir"))
    assert result.returncode == 2 and "not a valid .qir" in result.stderr
    assert len([x for x in result.stderr.splitlines() if x.strip()]) == 1


def test_existing_output_is_left_untouched_by_a_failed_run(tiny_model_dirs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    result = run_cli(str(tiny_model_dirs["bert"]), "--seq-len", "100", "-o", str(out))
    assert result.returncode == 2
    assert [p.name for p in out.iterdir()] == ["manifest.json"] and (
        out / "manifest.json"
    ).read_text() == "{}"


# ------------------------------------------------- quantization workflows' outputs


def _tiny_bert(tiny_model_dirs):
    from transformers import BertModel

    return BertModel.from_pretrained(tiny_model_dirs["bert"]).eval()


def test_float16_quantize_dynamic_state_dict_is_refused(tiny_model_dirs, tmp_path):
    """qint8 quantize_dynamic sources keep their integers (test_torch_quantized_sources.py);
    what qexport cannot keep is one line (exit 2, nothing written), never a re-quantization."""
    quantized = torch.ao.quantization.quantize_dynamic(
        _tiny_bert(tiny_model_dirs), {torch.nn.Linear}, dtype=torch.float16
    )
    torch.save(quantized.state_dict(), tmp_path / "quantized_bert.pth")
    out = tmp_path / "out"
    config = str(tiny_model_dirs["bert"] / "config.json")
    result = run_cli(
        str(tmp_path / "quantized_bert.pth"), "--config", config, "--seq-len", "16", "-o", str(out)
    )
    assert_clean_failure(result, out, "packed Linear qexport cannot read", "dtype=torch.qint8")


def test_qat_state_dict_keeps_its_params_not_silently_stripped(tiny_model_dirs, tmp_path):
    """Eager QAT (fbgemm qconfig, prepare_qat): its FakeQuantize scales used to be dropped
    without a word and the model re-quantized with qexport's own calibration. They are now the
    IR's params (tests/test_qat_sources.py has the arithmetic)."""
    from torch.ao.quantization import get_default_qat_qconfig, prepare_qat

    model = _tiny_bert(tiny_model_dirs).train()
    model.qconfig = get_default_qat_qconfig("fbgemm")
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.qconfig = None  # eager QAT has no float-qparams embedding in this qconfig
    prepare_qat(model, inplace=True)
    model(torch.randint(0, 64, (2, 8))).last_hidden_state.sum().backward()
    torch.save(model.state_dict(), tmp_path / "qat.pth")
    out = tmp_path / "out"
    config = str(tiny_model_dirs["bert"] / "config.json")
    result = run_cli(str(tmp_path / "qat.pth"), "--config", config, "--seq-len", "16", "-o", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "torch-qat" and manifest["calibration"] is None


def test_keys_the_architecture_has_no_place_for_are_reported(tiny_model_dirs, tmp_path):
    state = _tiny_bert(tiny_model_dirs).state_dict()
    state["cls.predictions.bias"] = torch.zeros(64)  # a pre-training head BertModel does not have
    torch.save(state, tmp_path / "with_head.pt")
    graph = qexport.capture(
        tmp_path / "with_head.pt", seq_len=16, config=tiny_model_dirs["bert"] / "config.json"
    )
    notes = graph.metadata["notes"]
    assert any("ignored 1 key(s)" in n and "cls.predictions.bias" in n for n in notes), notes
