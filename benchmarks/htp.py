"""Qualcomm's HTP (onnxruntime-qnn's x86-64 simulator): qexport's --for npu ONNX file beside
onnxruntime's own QNN flow on the same model.

The peer is what onnxruntime documents for the HTP: ``get_qnn_qdq_config`` + ``quantize`` on an
fp32 file with static shapes, 8- and 16-bit activations, uint8 per-tensor weights (its per-channel
int8 weights leave LayerNorms the HTP refuses). Every file is opened for Hexagon v73 (``HTP_ARCH``);
"whole" means the session builds with CPU fallback disabled. Accuracy is mean-pooled over real
tokens against torch fp32, and ours also against its IR. Latency is not measured: this is a
simulator.

    python -m benchmarks.htp [--samples 200]     # writes benchmarks/results/htp.{json,md}
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import minilm_texts, parity, pooled

ROOT = Path(__file__).resolve().parents[1]


def _htp_outputs(path: Path, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, bool]:
    """last_hidden_state on the HTP, one sentence at a time; whether it ran with no CPU fallback."""
    from qexport.backends.onnx.qnn import htp_session

    try:
        session, whole = htp_session(path, strict=True), True
    except Exception:  # a file the HTP does not take whole runs with fallback
        session, whole = htp_session(path, strict=False), False
    feeds = {i.name for i in session.get_inputs()}
    out = [
        session.run(["last_hidden_state"], {k: v[i : i + 1] for k, v in inputs.items() if k in feeds})[0]
        for i in range(len(inputs["input_ids"]))
    ]
    return np.concatenate(out), whole


def _ort_qnn_peer(fp32_onnx: Path, out: Path, calib: dict[str, np.ndarray], bits: int) -> Path:
    from onnxruntime.quantization import QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    from benchmarks.peers import _Reader

    activation = QuantType.QUInt16 if bits == 16 else QuantType.QUInt8
    config = get_qnn_qdq_config(
        str(fp32_onnx), _Reader(calib), activation_type=activation, weight_type=QuantType.QUInt8
    )
    quantize(str(fp32_onnx), str(out), config)
    return out


def section(
    model_dir: Path, calib: dict[str, np.ndarray], held_out: dict[str, np.ndarray], work: Path
) -> dict:
    import qexport
    from qexport.backends.onnx import OnnxBackend
    from qexport.backends.onnx.qnn import HTP_ARCH

    graph = qexport.capture(model_dir, seq_len=128)
    mask = held_out["attention_mask"]
    batches = range(0, len(mask), 8)

    def ir(g: Any, simulate: bool) -> np.ndarray:
        return np.concatenate(
            [
                qexport.run_reference(g, {k: v[s : s + 8] for k, v in held_out.items()}, simulate=simulate)[
                    "last_hidden_state"
                ]
                for s in batches
            ]
        )

    fp32 = pooled(ir(graph, False), mask)
    npu = qexport.quantize(graph, "npu-int16", calibration=calib)
    files = {"qexport npu-int16 (--for npu)": work / "qexport_npu.onnx"}
    OnnxBackend().lower(npu, files["qexport npu-int16 (--for npu)"])
    fp32_onnx = work / "fp32_static.onnx"  # static [1, 128], attention as separate ops
    OnnxBackend(npu_form=True, fuse_attention=False).lower(qexport.quantize(graph, "fp32"), fp32_onnx)
    peer_calib = {k: v[:64] for k, v in calib.items()}
    rows = []
    for bits in (8, 16):
        tool = f"onnxruntime QNN flow, {bits}-bit activations"
        try:
            files[tool] = _ort_qnn_peer(fp32_onnx, work / f"ort_qnn_a{bits}.onnx", peer_calib, bits)
        except Exception as exc:  # a peer that fails is reported, not dropped
            rows.append({"tool": tool, "failed": f"{type(exc).__name__}: {exc}"[:300]})
    safetensors = (model_dir / "model.safetensors").stat().st_size
    for tool, path in files.items():
        print(f"HTP v{HTP_ARCH}: {tool} on {len(mask)} sentences ...", flush=True)
        try:
            hidden, whole = _htp_outputs(path, held_out)
        except Exception as exc:
            rows.append({"tool": tool, "failed": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        row = {
            "tool": tool,
            "whole_on_htp": whole,
            "size_vs_fp32": round(path.stat().st_size / safetensors, 3),
            **parity(pooled(hidden, mask), fp32),
        }
        if path == files["qexport npu-int16 (--for npu)"]:
            row["sqnr_vs_ir_db"] = parity(pooled(hidden, mask), pooled(ir(npu, True), mask))["sqnr_db"]
        rows.append(row)
    return {"htp_arch": HTP_ARCH, "samples": len(mask), "rows": rows}


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Qualcomm HTP v{result['htp_arch']} (onnxruntime-qnn simulator), all-MiniLM-L6-v2, "
        f"{result['samples']} held-out sentences, seq 128, mean-pooled vs torch fp32:",
        "",
        "| file | every node on the HTP | cosine mean | SQNR dB | vs IR dB | size vs fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "failed" in r:
            lines.append(f"| {r['tool']} | failed: {r['failed'][:120]} | | | | |")
            continue
        lines.append(
            f"| {r['tool']} | {'yes' if r['whole_on_htp'] else 'no (CPU fallback)'} | {r['cos_mean']} | "
            f"{r['sqnr_db']} | {r.get('sqnr_vs_ir_db', '–')} | {r['size_vs_fp32']}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    model_dir, calib, held_out = minilm_texts(args.samples)
    result = section(model_dir, calib, held_out, Path(tempfile.mkdtemp(prefix="qexport-htp-")))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "htp.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "htp.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
