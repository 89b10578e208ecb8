"""onnxruntime sessions as every qexport measurement opens them: the CPU provider, exact integer
kernels on this CPU, and the caller's float state left as it was found."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qexport.backends.onnx.cpu import flush_denormals, own_float_state, session_config


def new_session(model: str | bytes, options: Any) -> Any:
    """An onnxruntime CPU session that leaves this thread's float state as it found it."""
    import onnxruntime as ort

    with own_float_state():
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def session_options(threads: int = 2, optimize: bool = True) -> Any:
    """The onnxruntime options every qexport measurement uses: exact integer kernels on this CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in session_config().items():
        options.add_session_config_entry(key, value)
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def run_intermediates(path: Path, inputs: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Run with every IR value in ``names`` that the ONNX graph carries exposed as an output."""
    import onnx

    model = onnx.load(str(path))
    produced = {o for node in model.graph.node for o in node.output}
    existing = {o.name for o in model.graph.output}
    wanted = [n for n in names if n in produced and n not in existing]
    for name in wanted:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = new_session(model.SerializeToString(), session_options())
    feed = {i.name: np.asarray(inputs[i.name]).astype(np.int64) for i in session.get_inputs()}
    with flush_denormals():
        return dict(zip(wanted, session.run(wanted, feed), strict=True))
