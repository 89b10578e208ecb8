"""The tools people use today, run on the same model and inputs in the same process.

Every peer returns a dict with its artifact bytes, pooled outputs and ``call`` (one batch-1
inference, timed later with every other artifact, interleaved), or raises; the caller records a
failure with its error instead of dropping the row.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import pooled


def _ort_session(path: Path, defaults: bool = False, optimize: bool = True) -> Any:
    """Same session options as qexport's own files (no denormals; exact U8U8 kernels on x86
    without VNNI), or onnxruntime's defaults (2 threads either way); ``optimize=False`` turns
    onnxruntime's graph optimizations off."""
    import onnxruntime as ort

    from qexport.backends.onnx.session import new_session, session_options

    if not defaults:
        return new_session(str(path), session_options(optimize=optimize))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    return new_session(str(path), options)


def _run_ort(
    path: Path,
    held_out: dict[str, np.ndarray],
    one: dict[str, np.ndarray],
    defaults: bool = False,
    optimize: bool = True,
) -> dict[str, Any]:
    """Run like qexport's ``OnnxBackend.run`` (denormals flushed on the calling thread while
    onnxruntime runs), or with ``defaults`` exactly as a plain onnxruntime user would."""
    from qexport.backends.onnx.cpu import flush_denormals

    session = _ort_session(path, defaults, optimize)
    names = [i.name for i in session.get_inputs()]
    mode = contextlib.nullcontext if defaults else flush_denormals
    rows = []
    for start in range(0, len(held_out["input_ids"]), 8):
        feed = {n: held_out[n][start : start + 8].astype(np.int64) for n in names}
        with mode():
            rows.append(pooled(session.run(["last_hidden_state"], feed)[0], feed["attention_mask"]))
    feed1 = {n: one[n].astype(np.int64) for n in names}

    def call() -> Any:
        with mode():
            return session.run(None, feed1)

    return {"bytes": path.stat().st_size, "call": call, "pooled": np.concatenate(rows)}


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


def torch_aoti_package(path: Path, held_out, one) -> dict[str, Any]:
    """qexport's AOTInductor package (--to torch-aoti), loaded with plain torch."""
    import torch

    module = torch._inductor.aoti_load_package(str(path))
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

    def call() -> Any:
        with torch.no_grad():
            return hidden(one_t)

    return {"bytes": path.stat().st_size, "call": call, "pooled": np.concatenate(rows)}


def litert_file(path: Path, held_out: dict[str, np.ndarray], one: dict[str, np.ndarray]) -> dict[str, Any]:
    """Any .tflite with a serving_default signature, run by the LiteRT interpreter (XNNPACK)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=2)
    interp.allocate_tensors()
    runner = interp.get_signature_runner("serving_default")
    details = runner.get_input_details()
    rows = []
    for i in range(len(held_out["input_ids"])):
        feed = {n: held_out[n][i : i + 1].astype(d["dtype"]) for n, d in details.items()}
        rows.append(pooled(runner(**feed)["last_hidden_state"], feed["attention_mask"]))
    feed1 = {n: one[n].astype(d["dtype"]) for n, d in details.items()}
    return {
        "bytes": path.stat().st_size,
        "call": lambda: runner(**feed1),
        "pooled": np.concatenate(rows),
    }


# ---- TFLite routes a user would take today (need `pip install 'qexport[bench]'`)
class _SentenceEncoder:
    """HF model -> both of BertModel's outputs, keyword inputs (what litert-torch traces).

    pooler_output too, so the peer files compute what qexport's do (the pooler costs ~3 % of
    a dynamic-range file's latency, measured). ``pooler=False`` for the pt2e static route: with
    the pooler output its int8 file collapses to cosine 0.10 (measured), without it 0.95 —
    the row shows that route at its best."""

    def __new__(cls, hf: Any, pooler: bool = True) -> Any:
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = hf

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                out = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                )
                if not pooler:
                    return {"last_hidden_state": out.last_hidden_state}
                return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}

        return Wrapper().eval()


def _sample_kwargs(one: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(v.astype(np.int32)) for k, v in one.items()}


def litert_torch_fp32(hf: Any, work: Path, one: dict[str, np.ndarray]) -> Path:
    """litert-torch's plain fp32 conversion (the starting point of the AEQ route)."""
    import litert_torch

    path = work / "litert_torch_fp32.tflite"
    if not path.exists():
        litert_torch.convert(_SentenceEncoder(hf), sample_kwargs=_sample_kwargs(one)).export(str(path))
    return path


def aeq_dynamic(fp32_tflite: Path, work: Path) -> Path:
    """ai-edge-quantizer's dynamic-range recipe (int8 weights, float activations)."""
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(str(fp32_tflite))
    qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    path = work / "aeq_dynamic_wi8_afp32.tflite"
    qt.quantize().export_model(str(path), overwrite=True)
    return path


def litert_pt2e_static(hf: Any, work: Path, one: dict[str, np.ndarray], calib: dict[str, np.ndarray]) -> Path:
    """litert-torch with its pt2e static int8 quantizer, calibrated on the same sentences."""
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    module = _SentenceEncoder(copy.deepcopy(hf), pooler=False)
    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    )
    exported = torch.export.export(module, (), _sample_kwargs(one)).module()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(0, len(calib["input_ids"]), 1):
            prepared(**_sample_kwargs({k: v[i : i + 1] for k, v in calib.items()}))
    converted = convert_pt2e(prepared, fold_quantize=False)
    path = work / "litert_torch_pt2e_static.tflite"
    litert_torch.convert(
        converted, sample_kwargs=_sample_kwargs(one), quant_config=QuantConfig(pt2e_quantizer=quantizer)
    ).export(str(path))
    return path
