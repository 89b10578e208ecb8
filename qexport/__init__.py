"""qexport: one quantized IR, many deployables (TFLite, ONNX QDQ, PyTorch), with parity checks.

Python API (the CLI is a thin layer over it)::

    graph = qexport.frontend("path/to/hf-model", seq_len=128)
    qexport.ir.save(graph, "model.qir")
    outputs = qexport.run_reference(graph, {"input_ids": ids, "attention_mask": mask, ...})
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qexport import ir
from qexport.errors import QExportError

if TYPE_CHECKING:
    from qexport.ir import Graph
    from qexport.quant.recipe import Recipe

__version__ = "0.1.0"
__all__ = ["QExportError", "__version__", "capture", "ir", "quantize", "run_reference"]


def capture(
    src: str | Path,
    seq_len: int = 128,
    *,
    config: str | Path | None = None,
    trust_pickle: bool = False,
) -> Graph:
    """Load a model source and capture it into a float IR graph (see qexport.frontend)."""
    from qexport.frontend.pipeline import capture_source

    return capture_source(src, seq_len=seq_len, config=config, trust_pickle=trust_pickle).graph


def quantize(
    graph: Graph,
    recipe: str | Path | Recipe = "int8",
    calibration: str | Path | dict[str, np.ndarray] | None = None,
    *,
    tokenizer: str | Path | None = None,
    seq_len: int | None = None,
    learn: bool = False,
) -> Graph:
    """Apply a recipe (built-in name, .toml/.json file or a ``Recipe``) to a float graph.

    ``calibration`` is a text file (one example per line, needs ``tokenizer``), an ``.npz`` of
    named arrays, or a dict of arrays with a leading sample axis; None uses built-in sentences.
    ``learn=True`` (or ``learn = true`` in the recipe file) learns the params from the
    calibration data against the float graph (docs/learning.md).
    """
    from dataclasses import replace

    from qexport.quant.calibration import load_calibration
    from qexport.quant.engine import quantize_graph
    from qexport.quant.recipe import resolve

    spec = resolve(recipe)
    if learn and not spec.learn:
        spec = replace(spec, learn=True)
    calib = None
    if spec.needs_calibration or spec.learn:
        length = seq_len or int(graph.metadata.get("capture", {}).get("seq_len", 128))
        calib = load_calibration(
            graph,
            calibration,
            seq_len=length,
            tokenizer_dir=Path(tokenizer) if tokenizer else None,
            learning=spec.learn,
        )
    if spec.learn:
        from qexport.learn import for_ranges
        from qexport.learn import learn as learn_params

        quantized = learn_params(graph, quantize_graph(graph, spec, for_ranges(calib)), spec, calib)
    else:
        quantized = quantize_graph(graph, spec, calib)
    return quantized


def run_reference(
    graph: Graph, inputs: dict[str, np.ndarray], *, simulate: bool = True
) -> dict[str, np.ndarray]:
    """Run the numpy reference executor; outputs keyed by the model's output names."""
    from qexport.reference.executor import run

    return run(graph, inputs, simulate=simulate)
