"""The issues' acceptance gates, read off one benchmark run.

The latency gates depend on the CPU (docs/backend-tflite.md: on AVX-512 VNNI the int8 GEMMs
are at most ~4x the float ones, on AMX far more), so a gate's verdict belongs to the machine
and the run that measured it. ``benchmarks.run`` writes this table next to the rows it comes
from; re-running the benchmark on another CPU answers "are the gates met there?" directly.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.measure import ratio

Result = dict[str, Any]

# The quantization engine's accuracy vs fp32, which issues #4 and #5 ask every backend to keep.
ENGINE_COSINE_MEAN, ENGINE_COSINE_MIN, ENGINE_SQNR_DB = 0.998, 0.99, 24.0
AEQ_PEER = "litert-torch fp32 + ai-edge-quantizer dynamic_wi8_afp32"

_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}


@dataclass(frozen=True)
class Gate:
    issue: int
    what: str
    tool: str  # the benchmark row the gate is about
    measure: Callable[[Result, dict[str, Any]], float | None]
    op: str
    threshold: float

    def evaluate(self, result: Result) -> dict[str, Any]:
        row = next((r for r in result["rows"] if r["tool"] == self.tool), None)
        value = None if row is None or "failed" in row else self.measure(result, row)
        met = None if value is None else _OPS[self.op](value, self.threshold)
        if value is not None and math.isinf(value):
            value = "identical"  # an SQNR of two equal outputs; JSON has no Infinity
        return {
            "issue": self.issue,
            "gate": f"{self.what} {self.op} {self.threshold:g}",
            "tool": self.tool,
            "value": value,
            "met": met,
        }


def _field(name: str) -> Callable[[Result, dict[str, Any]], float | None]:
    return lambda result, row: row.get(name)


def _vs_tool(peer: str) -> Callable[[Result, dict[str, Any]], float | None]:
    """Median over rounds of this row's latency / the named peer's, each pair back to back."""

    def measure(result: Result, row: dict[str, Any]) -> float | None:
        other = next((r for r in result["rows"] if r["tool"] == peer and "latency_rounds_ms" in r), None)
        if other is None or "latency_rounds_ms" not in row:
            return None
        rounds = {"ours": row["latency_rounds_ms"], "peer": other["latency_rounds_ms"]}
        return ratio(rounds, "ours", "peer")

    return measure


def _onnx_on_off(result: Result, row: dict[str, Any]) -> float | None:
    """SQNR between onnxruntime's optimized and unoptimized runs; identical outputs are inf."""
    off = result.get("onnx_int8_optimizations_off")
    if not off:
        return None
    vs = off["vs_optimized"]
    return float("inf") if vs == "identical" else float(vs["sqnr_db"])


def _accuracy(issue: int, tool: str) -> list[Gate]:
    return [
        Gate(issue, "cosine mean vs fp32", tool, _field("cos_mean"), ">=", ENGINE_COSINE_MEAN),
        Gate(issue, "cosine min vs fp32", tool, _field("cos_min"), ">=", ENGINE_COSINE_MIN),
        Gate(issue, "SQNR vs fp32 (dB)", tool, _field("sqnr_db"), ">=", ENGINE_SQNR_DB),
    ]


def _default_command_gates() -> list[Gate]:
    """#24: the files `qexport SRC` writes without --recipe (each backend's default_recipe) are
    the fast ones on their runtime and pass the default parity check (cosine 0.995, 20 dB)."""
    from qexport.backends.onnx.backend import OnnxBackend
    from qexport.backends.tflite.backend import TfliteBackend

    tflite = f"qexport {TfliteBackend.default_recipe} (.tflite)"
    onnx = "qexport " + OnnxBackend.default_recipe
    gates = [
        Gate(
            24,
            "default TFLite file: latency x LiteRT fp32",
            tflite,
            _field("latency_vs_runtime_fp32"),
            "<=",
            0.4,
        ),
        Gate(
            24,
            "default ONNX file: latency x onnxruntime fp32",
            onnx,
            _field("latency_vs_runtime_fp32"),
            "<=",
            0.5,
        ),
    ]
    for tool in (tflite, onnx):
        gates += [
            Gate(24, "default check: cosine mean vs fp32", tool, _field("cos_mean"), ">=", 0.995),
            Gate(24, "default check: SQNR vs fp32 (dB)", tool, _field("sqnr_db"), ">=", 20.0),
        ]
    return gates


def _npu_share(accelerator: str) -> Callable[[Result, dict[str, Any]], float | None]:
    """vela's NPU operator share (%) for the row's .tflite on one Ethos-U configuration."""

    def measure(result: Result, row: dict[str, Any]) -> float | None:
        report = result.get("npu", {}).get(row["tool"], {}).get(accelerator, {})
        return report.get("npu_share")

    return measure


def _npu_gates() -> list[Gate]:
    """#22: the --for npu file runs whole on Ethos-U and keeps its accuracy."""
    from qexport.convert import NPU_RECIPE

    tool = f"qexport {NPU_RECIPE} (.tflite)"
    return [
        Gate(22, "vela U85-256 NPU operators (%)", tool, _npu_share("ethos-u85-256"), ">=", 99.0),
        Gate(22, "vela U55-128 NPU operators (%)", tool, _npu_share("ethos-u55-128"), ">=", 95.0),
        Gate(22, "cosine mean vs fp32", tool, _field("cos_mean"), ">=", 0.999),
        Gate(22, "SQNR vs fp32 (dB)", tool, _field("sqnr_db"), ">=", 28.0),
        Gate(22, "SQNR vs the IR (dB)", tool, _field("sqnr_vs_ir_db"), ">=", 30.0),
        Gate(22, "size x fp32 safetensors", tool, _field("bytes_vs_fp32"), "<=", 0.27),
    ]


ONNX, TORCH = "qexport int8", "qexport int8 (.pt2)"
TORCH_AOTI = "qexport int8 (.aoti.pt2)"  # --to torch-aoti: the same program, compiled by AOTInductor
# TFLite: the default int8 file keeps Linear outputs float, so its FCs run as float (fp32
# speed, docs/backend-tflite.md); the `dynamic` file is the one with integer FCs, hence the
# latency candidate of #5.
TFLITE_INT8, TFLITE = "qexport int8 (.tflite)", "qexport dynamic (.tflite)"
GATES: tuple[Gate, ...] = (
    Gate(4, "size x fp32 safetensors", ONNX, _field("bytes_vs_fp32"), "<=", 0.27),
    Gate(4, "SQNR vs the IR (dB)", ONNX, _field("sqnr_vs_ir_db"), ">=", 40.0),
    *_accuracy(4, ONNX),
    Gate(4, "optimizations on vs off (dB)", ONNX, _onnx_on_off, ">=", 40.0),
    Gate(4, "latency x onnxruntime fp32", ONNX, _field("latency_vs_runtime_fp32"), "<=", 0.5),
    Gate(4, "latency x onnxruntime's fastest int8 file", ONNX, _field("latency_vs_best_peer"), "<", 1.0),
    Gate(5, "SQNR vs the IR (dB)", TFLITE_INT8, _field("sqnr_vs_ir_db"), ">=", 35.0),
    Gate(5, "size x fp32 safetensors", TFLITE, _field("bytes_vs_fp32"), "<=", 0.27),
    Gate(5, "SQNR vs the IR (dB)", TFLITE, _field("sqnr_vs_ir_db"), ">=", 35.0),
    *_accuracy(5, TFLITE),
    Gate(
        5, "latency x LiteRT on qexport's fp32 .tflite", TFLITE, _field("latency_vs_runtime_fp32"), "<=", 0.3
    ),
    Gate(5, "latency x the ai-edge-quantizer dynamic file", TFLITE, _vs_tool(AEQ_PEER), "<=", 1.0),
    Gate(6, "latency x torch eager fp32", TORCH, _field("latency_vs_runtime_fp32"), "<=", 0.6),
    Gate(28, "latency x torch eager fp32", TORCH, _field("latency_vs_runtime_fp32"), "<=", 0.6),
    Gate(28, "SQNR vs the IR (dB)", TORCH, _field("sqnr_vs_ir_db"), ">=", 40.0),
    Gate(28, "latency x torch eager fp32", TORCH_AOTI, _field("latency_vs_runtime_fp32"), "<=", 0.6),
    Gate(28, "SQNR vs the IR (dB)", TORCH_AOTI, _field("sqnr_vs_ir_db"), ">=", 40.0),
    *_default_command_gates(),
    *_npu_gates(),
)


def evaluate(result: Result) -> list[dict[str, Any]]:
    return [gate.evaluate(result) for gate in GATES]


def to_markdown(gates: list[dict[str, Any]]) -> list[str]:
    lines = ["| issue | gate | artifact | this run | met |", "|---|---|---|---|---|"]
    for g in gates:
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        value = "" if g["value"] is None else g["value"]
        lines.append(f"| #{g['issue']} | {g['gate']} | {g['tool']} | {value} | {met} |")
    return lines
