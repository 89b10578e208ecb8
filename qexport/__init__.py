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

__version__ = "0.1.0"
__all__ = ["QExportError", "__version__", "capture", "ir", "run_reference"]


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


def run_reference(
    graph: Graph, inputs: dict[str, np.ndarray], *, simulate: bool = True
) -> dict[str, np.ndarray]:
    """Run the numpy reference executor; outputs keyed by the model's output names."""
    from qexport.reference.executor import run

    return run(graph, inputs, simulate=simulate)
