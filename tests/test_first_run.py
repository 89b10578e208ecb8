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


# ------------------------------------------------------------ OUT, check, notes, inspect


@pytest.fixture(scope="module")
def default_run(tiny_model_dirs, tmp_path_factory):
    """The default command (no --recipe) into OUT, run from a folder of its own."""
    root = tmp_path_factory.mktemp("default")
    (root / "cwd").mkdir()
    out = root / "out"
    result = run_cli(str(tiny_model_dirs["bert-cls"]), "-o", str(out), "--seq-len", "32", cwd=root / "cwd")
    return root, out, result


def test_default_command_gives_each_target_its_fast_recipe(default_run):
    root, out, _ = default_run
    manifest = json.loads((out / "manifest.json").read_text())
    irs = {e["file"]: e["recipe"] for e in manifest["irs"]}
    recipes = {a["backend"]: irs[a["ir"]] for a in manifest["artifacts"]}
    assert recipes == {"onnx": "int8", "tflite": "dynamic", "torch": "int8"}
    assert (
        irs == {"model.qir": "int8", "model.dynamic.qir": "dynamic"} and manifest["ir"] == manifest["irs"][0]
    )
    doc = json.loads((out / "parity.json").read_text())
    own = {(r["reference"], r["candidate"]) for r in doc["comparisons"]}
    assert ("ir_simulated:dynamic", "tflite") in own and ("ir_simulated:int8", "onnx") in own
    assert not list(root.rglob("*.lock")) and not list(root.rglob(".*.lock"))


def test_the_piped_parity_table_names_each_ir(default_run):
    """Piped (a CI log: 80 columns) the table still tells the two IRs apart; it once cut both
    to ``ir_simulated…``."""
    _, _, result = default_run
    rows = [line.split() for line in result.stderr.splitlines()]
    assert any(r[:3] == ["IR", "int8", "onnx"] for r in rows)
    assert any(r[:3] == ["IR", "dynamic", "tflite"] for r in rows)
    assert "…" not in result.stderr


def test_top1_agreement_is_shown_and_its_flag_is_a_fraction(default_run):
    _, out, result = default_run
    assert "top-1" in result.stderr and "top-1" in (out / "report.md").read_text()
    bad = run_cli("check", str(out), "--min-agreement", "1.01", "--no-bisect")
    assert bad.returncode == 2 and "--min-agreement must be between 0 and 1" in bad.stderr


def test_check_works_from_any_folder(default_run, tmp_path):
    _, out, _ = default_run
    result = run_cli("check", str(out), "--no-bisect", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr  # random-init classifier: parity is what it is
    assert (out / "parity.json").is_file()


def test_out_holds_exactly_one_run(tiny_model_dirs, tmp_path):
    out = tmp_path / "out"
    src = str(tiny_model_dirs["bert"])
    first = run_cli(src, "--to", "tflite,onnx", "-o", str(out), "--seq-len", "32", "--min-cos", "2")
    assert first.returncode == 2  # unknown option for convert: nothing ran
    first = run_cli(src, "--to", "tflite,onnx", "-o", str(out), "--seq-len", "32")
    assert first.returncode in (0, 1), first.stderr
    (out / "bisect_tflite.png").write_bytes(b"from an earlier check")
    (out / "mine.txt").write_text("a user's file")
    second = run_cli(src, "--to", "onnx", "-o", str(out), "--seq-len", "32", "--no-check")
    assert second.returncode == 0, second.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {manifest["ir"]["file"], *(a["file"] for a in manifest["artifacts"]), "manifest.json"}
    assert {p.name for p in out.iterdir()} == listed | {"mine.txt"}
    assert not list(tmp_path.glob(".*lock"))


def test_notes_are_short_and_only_for_this_cpu(default_run):
    from qexport.report.notes import applies_here

    _, out, result = default_run
    manifest = json.loads((out / "manifest.json").read_text())
    printed = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert all(len(line) <= 110 for line in printed), printed
    assert len(printed) == sum(1 for n in manifest["notes"] if n["text"] and applies_here(n))
    assert all(n["detail"] for n in manifest["notes"] if n["text"].startswith(("onnx:", "tflite:", "torch:")))


def test_inspect_fits_one_screen_and_lists_nodes_with_full(tiny_model_dirs, tmp_path):
    out = tmp_path / "out"
    assert (
        run_cli(str(tiny_model_dirs["bert"]), "--to", "none", "-o", str(out), "--seq-len", "32").returncode
        == 0
    )
    summary = run_cli("inspect", str(out / "model.qir"))
    assert summary.returncode == 0, summary.stderr
    lines = summary.stdout.splitlines()
    assert len(lines) <= 40 and max(map(len, lines)) <= 80, summary.stdout
    assert "static uint8 activations" in summary.stdout and "'scheme'" not in summary.stdout
    assert "encoder.layer.1" in summary.stdout and "--full" in summary.stdout
    full = run_cli("inspect", str(out / "model.qir"), "--full")
    assert "encoder.layer.1.intermediate.dense" in full.stdout and len(full.stdout.splitlines()) > len(lines)


def test_pt2_takes_two_and_one_token_sequences(tiny_model_dirs, tmp_path):
    from qexport.backends.torch.backend import TorchBackend

    graph = qexport.quantize(qexport.capture(tiny_model_dirs["bert"], seq_len=16), "int8")
    TorchBackend(gemm="float").lower(graph, tmp_path / "m.pt2")
    module = torch.export.load(str(tmp_path / "m.pt2")).module()
    for seq in (2, 1):
        ids = np.array([[101, 102][:seq]], dtype=np.int64)
        with torch.no_grad():
            got = module(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.ones(1, seq, dtype=torch.long),
                token_type_ids=torch.zeros(1, seq, dtype=torch.long),
            )
        want = qexport.run_reference(graph, {"input_ids": ids})
        assert np.abs(got["last_hidden_state"].numpy() - want["last_hidden_state"]).max() < 1e-3


def test_pt2_bytes_do_not_depend_on_the_install_path(tiny_model_dirs, tmp_path):
    import zipfile

    from qexport.backends.torch.backend import TorchBackend

    graph = qexport.quantize(qexport.capture(tiny_model_dirs["bert"], seq_len=16), "int8")
    TorchBackend(gemm="float").lower(graph, tmp_path / "m.pt2")
    here = str(Path(qexport.__file__).resolve().parents[1]).encode()
    with zipfile.ZipFile(tmp_path / "m.pt2") as zf:
        assert not any(here in zf.read(name) or b"site-packages" in zf.read(name) for name in zf.namelist())


def test_check_of_a_state_dict_source_needs_no_config_again(tiny_model_dirs, tmp_path):
    from transformers import BertModel

    torch.save(BertModel.from_pretrained(tiny_model_dirs["bert"]).state_dict(), tmp_path / "weights.pt")
    (tmp_path / "b").mkdir()
    config = str(tiny_model_dirs["bert"] / "config.json")
    args = ("weights.pt", "--config", config, "--to", "onnx", "-o", "out", "--seq-len", "16", "--no-check")
    converted = run_cli(*args, cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    checked = run_cli("check", "../out", "--no-bisect", cwd=tmp_path / "b")
    assert checked.returncode in (0, 1), checked.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["source"]["config"] == config
