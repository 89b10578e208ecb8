"""Every BERT-family architecture transformers 5 ships: capture == torch within 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import qexport
from qexport.frontend.export import example_inputs

ARCHS = ["bert", "bert-cls", "distilbert", "roberta", "electra", "mobilebert"]


@pytest.mark.parametrize("arch", ARCHS)
def test_capture_matches_torch(arch, tiny_model_dirs):
    path = tiny_model_dirs[arch]
    graph = qexport.capture(path, seq_len=32)
    config = transformers.AutoConfig.from_pretrained(path)
    model = getattr(transformers, config.architectures[0]).from_pretrained(path).eval()
    inputs = example_inputs(list(graph.inputs), 4, 32, config.vocab_size)
    inputs["attention_mask"][1:, 20:] = 0  # real padding exercises the mask path
    with torch.no_grad():
        expected = model(**inputs)
    ours = qexport.run_reference(graph, {k: v.numpy() for k, v in inputs.items()})
    assert list(ours) == [k for k in expected.keys() if isinstance(expected[k], torch.Tensor)]
    for name, value in ours.items():
        assert np.abs(value - expected[name].numpy()).max() < 1e-4, name
    if arch == "bert-cls":
        assert list(ours) == ["logits"]
