"""Every .tflite qexport writes is valid by TFLite's op semantics: Arm's vela compiler reads it.

LiteRT's CPU kernels accept some things TFLite's op spec forbids (a RESHAPE that changes
quantization params, for one); stricter consumers such as vela refuse the whole file. vela is a
real test dependency (PyPI ``ethos-u-vela``), run as a subprocess on the files the tests write.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import qexport
from qexport.backends.tflite import TfliteBackend
from qexport.quant.calibration import random_tokens

RECIPES = ("int8", "int8-full", "dynamic", "int8-mixed", "int16x8", "weight-only", "fp32")


@pytest.fixture(scope="module")
def tiny_bert(tiny_model_dirs):
    return qexport.capture(tiny_model_dirs["bert"], seq_len=16)


def vela(path, out_dir, accelerator: str = "ethos-u85-256") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ethosu.vela", "--accelerator-config", accelerator]
    return subprocess.run(
        [*command, "--output-dir", str(out_dir), str(path)], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("recipe", RECIPES)
def test_vela_reads_every_tflite_file(recipe, tiny_bert, tmp_path):
    graph = qexport.quantize(tiny_bert, recipe, calibration=random_tokens(tiny_bert, 16, samples=8))
    TfliteBackend().lower(graph, tmp_path / "model.tflite")
    result = vela(tmp_path / "model.tflite", tmp_path / "vela")
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    assert "NPU operators" in result.stdout
