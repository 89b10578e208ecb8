"""The ONNX files of the recipes with int16 Linear inputs, in both Linear forms, beside fp32.

onnxruntime has no int16 GEMM. The integer form (the default) sums each int16 Linear in two
8-bit halves on MatMulInteger, bit for bit the IR's Linear (backends/onnx/int16_linear.py);
the plain QDQ form (``--onnx-linears qdq``) dequantizes input and weight for a float MatMul,
which onnxruntime rewrites into MatMulNBits. all-MiniLM-L6-v2, batch 1, seq 128, 2 threads,
latency interleaved round by round (``measure``); accuracy mean-pooled over real tokens on the
held-out sentences against torch fp32, and against the IR simulation.

    python -m benchmarks.onnx_int16 [--samples 200]   # writes benchmarks/results/onnx_int16.{json,md}
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import peers
from benchmarks.measure import fp32_setup, interleaved_latency, ir_pooled, parity, ratio, samples_main

FP32 = "qexport fp32"
RECIPES = ("int8-mixed", "int16x8")
FORMS = {"halves on MatMulInteger": True, "plain QDQ (float MatMul)": False}
"""Linear form -> OnnxBackend(integer_linears=...)."""


def run(samples: int) -> dict[str, Any]:
    import qexport
    from qexport.backends.onnx.backend import OnnxBackend

    model_dir, calib, held, ref = fp32_setup(samples)
    one = {k: v[:1] for k, v in held.items()}
    graph = qexport.capture(model_dir, seq_len=128)
    work = Path(tempfile.mkdtemp(prefix="qexport-onnx-int16-"))
    fp32 = work / "fp32.onnx"
    OnnxBackend().lower(graph, fp32)
    result = peers._run_ort(fp32, held, one)
    rows: list[dict[str, Any]] = [{"tool": FP32, "_call": result["call"], **parity(result["pooled"], ref)}]
    for recipe in RECIPES:
        ir = qexport.quantize(graph, recipe, calibration=calib)
        sim = ir_pooled(ir, held)
        for form, integer in FORMS.items():
            path = work / f"{recipe}.{'halves' if integer else 'qdq'}.onnx"
            start = time.monotonic()
            OnnxBackend(integer_linears=integer).lower(ir, path)
            seconds = time.monotonic() - start
            result = peers._run_ort(path, held, one)
            rows.append(
                {
                    "tool": f"qexport {recipe}, {form}",
                    "_call": result["call"],
                    "mb": round(result["bytes"] / 1e6, 1),
                    "lower_s": round(seconds, 1),
                    **parity(result["pooled"], ref),
                    "sqnr_vs_ir_db": parity(result["pooled"], sim)["sqnr_db"],
                }
            )
            print(f"{rows[-1]['tool']}: {seconds:.0f} s to write", flush=True)
    per_round = interleaved_latency({r["tool"]: r.pop("_call") for r in rows})
    for row in rows:
        row["ms"] = round(float(np.median(per_round[row["tool"]])), 2)
        row["vs_fp32"] = ratio(per_round, row["tool"], FP32)
    return {"samples": samples, "threads": 2, "rows": rows}


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"ONNX int16 Linears, all-MiniLM-L6-v2, batch 1, seq 128, {result['threads']} threads, "
        f"{result['samples']} held-out sentences (mean-pooled vs torch fp32); {result['cpu']}; "
        "every session with qexport's session config:",
        "",
        "| file | cosine mean | SQNR dB | vs IR dB | ms | × fp32 ONNX | MB | write s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['tool']} | {r['cos_mean']} | {r['sqnr_db']} | {r.get('sqnr_vs_ir_db', '–')} | {r['ms']} | "
            f"{r['vs_fp32']}× | {r.get('mb', '–')} | {r.get('lower_s', '–')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    samples_main("onnx_int16", __doc__, run, to_markdown)


if __name__ == "__main__":
    main()
