"""Foundation acceptance on real weights: capture -> save -> load -> run_reference == torch fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qexport
from qexport.ir import serde


@pytest.fixture(scope="module")
def reloaded(minilm, tmp_path_factory):
    captured, _ = minilm
    path = tmp_path_factory.mktemp("qir") / "model.qir"
    qexport.ir.save(captured.graph, path)
    return path, qexport.ir.load(path)


def _torch_fp32(hf_model, batch):
    with torch.no_grad():
        return hf_model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()


@pytest.mark.parametrize("batch_size", [1, 8])
def test_reloaded_ir_matches_torch_fp32_on_real_sentences(minilm, reloaded, sentence_inputs, batch_size):
    _, hf_model = minilm
    _, graph = reloaded
    worst = 0.0
    for start in range(0, 32, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in sentence_inputs.items()}
        ours = qexport.run_reference(graph, batch)["last_hidden_state"]
        worst = max(worst, float(np.abs(ours - _torch_fp32(hf_model, batch)).max()))
    assert worst < 1e-4


def test_resaving_a_loaded_qir_is_byte_identical(reloaded, tmp_path):
    path, graph = reloaded
    again = tmp_path / "again.qir"
    serde.save(graph, again)
    assert again.read_bytes() == path.read_bytes()


def test_node_names_follow_torch_module_paths(minilm):
    graph = minilm[0].graph
    names = {n.name for n in graph.nodes}
    assert {
        "encoder.layer.3.output.dense",
        "encoder.layer.0.attention.output.LayerNorm",
        "embeddings.word_embeddings",
        "encoder.layer.5.intermediate.intermediate_act_fn",
    } <= names
    assert (
        graph.node("encoder.layer.1.intermediate.dense").inputs[1]
        == "encoder.layer.1.intermediate.dense.weight"
    )


def test_inputs_and_outputs_carry_the_model_names_and_symbolic_dims(minilm):
    graph = minilm[0].graph
    assert list(graph.inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert list(graph.outputs) == ["last_hidden_state", "pooler_output"]
    assert graph.inputs["input_ids"].shape == ("batch", "seq")
    assert graph.values[graph.outputs["last_hidden_state"]].shape == ("batch", "seq", 384)


def test_one_capture_serves_other_sequence_lengths(minilm, sentence_inputs):
    captured, hf_model = minilm
    batch = {k: v[:2, :40] for k, v in sentence_inputs.items()}
    ours = qexport.run_reference(captured.graph, batch)["last_hidden_state"]
    assert np.abs(ours - _torch_fp32(hf_model, batch)).max() < 1e-4
