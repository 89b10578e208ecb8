"""The tools people use today, run on the same model and inputs in the same process.

Every peer returns a dict with its artifact bytes, latency and pooled outputs, or raises; the
caller records a failure with its error instead of dropping the row.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import latency_ms, pooled


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run_ort(path: Path, held_out: dict[str, np.ndarray], one: dict[str, np.ndarray]) -> dict[str, Any]:
    session = _ort_session(path)
    names = [i.name for i in session.get_inputs()]
    rows = []
    for start in range(0, len(held_out["input_ids"]), 8):
        feed = {n: held_out[n][start : start + 8].astype(np.int64) for n in names}
        rows.append(pooled(session.run(["last_hidden_state"], feed)[0], feed["attention_mask"]))
    feed1 = {n: one[n].astype(np.int64) for n in names}
    return {
        "bytes": path.stat().st_size,
        "latency_ms": latency_ms(lambda: session.run(None, feed1)),
        "pooled": np.concatenate(rows),
    }


def ort_dynamic(fp32_onnx: Path, work: Path, held_out, one, per_channel: bool) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = work / f"ort_dynamic_{'pc' if per_channel else 'pt'}.onnx"
    quantize_dynamic(str(fp32_onnx), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
    return _run_ort(out, held_out, one)


class _Reader:
    def __init__(self, calib: dict[str, np.ndarray]) -> None:
        self.rows = [
            {k: v[i : i + 1].astype(np.int64) for k, v in calib.items()}
            for i in range(len(calib["input_ids"]))
        ]

    def get_next(self):
        return self.rows.pop() if self.rows else None


def ort_static(fp32_onnx: Path, work: Path, held_out, one, calib, ops: list[str] | None) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    out = work / f"ort_static_{'all' if ops is None else '_'.join(ops)}.onnx"
    quantize_static(
        str(fp32_onnx),
        str(out),
        _Reader(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=ops,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return _run_ort(out, held_out, one)


def torch_dynamic(hf_model: Any, work: Path, held_out, one, per_channel: bool) -> dict[str, Any]:
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    model = quantize_dynamic(copy.deepcopy(hf_model), {torch.nn.Linear: qconfig}, dtype=torch.qint8)
    path = work / f"torch_dynamic_{'pc' if per_channel else 'pt'}.pt"
    torch.save(model.state_dict(), path)
    return _run_torch(lambda batch: model(**batch).last_hidden_state, path, held_out, one)


def torch_program(path: Path, held_out, one) -> dict[str, Any]:
    """qexport's own .pt2, loaded with plain torch.export.load."""
    import torch

    module = torch.export.load(str(path)).module()
    return _run_torch(lambda batch: module(**batch)["last_hidden_state"], path, held_out, one)


def _run_torch(hidden: Any, path: Path, held_out, one) -> dict[str, Any]:
    """Pooled outputs on the held-out set (batches of 8) and batch-1 latency of a torch callable."""
    import torch

    rows = []
    with torch.no_grad():
        for start in range(0, len(held_out["input_ids"]), 8):
            batch = {k: torch.from_numpy(v[start : start + 8]) for k, v in held_out.items()}
            rows.append(pooled(hidden(batch).numpy(), held_out["attention_mask"][start : start + 8]))
        one_t = {k: torch.from_numpy(v) for k, v in one.items()}
        lat = latency_ms(lambda: hidden(one_t))
    return {"bytes": path.stat().st_size, "latency_ms": lat, "pooled": np.concatenate(rows)}
