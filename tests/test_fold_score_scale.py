"""fold_score_scale: attention's 1/sqrt(d) moves into the query projection, values unchanged."""

from __future__ import annotations

import numpy as np

import qexport
from qexport.ir.ops import Op


def test_folds_one_mul_per_layer_and_keeps_outputs(tiny_model_dirs):
    graph = qexport.capture(tiny_model_dirs["bert"], seq_len=16)
    layers = sum(1 for n in graph.nodes if n.op is Op.SOFTMAX)
    assert graph.metadata["passes"]["fold_score_scale"] == layers
    assert not any(n.op is Op.MUL and "attention.self" in n.name for n in graph.nodes)
    rng = np.random.default_rng(0)
    inputs = {name: np.zeros((2, 16), np.int64) for name in graph.inputs}
    inputs["input_ids"] = rng.integers(3, 400, (2, 16))
    inputs["attention_mask"] = np.ones((2, 16), np.int64)
    inputs["attention_mask"][1, 9:] = 0
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_model_dirs["bert"])).eval()
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).last_hidden_state.numpy()
    ours = qexport.run_reference(graph, inputs)["last_hidden_state"]
    assert np.abs(ours - ref).max() < 1e-4
