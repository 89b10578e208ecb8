"""The benchmark's gate table reads the right rows and takes ratios round by round."""

from benchmarks import gates


def _result(onnx_on_off: object) -> dict:
    aeq = gates.AEQ_PEER
    return {
        "rows": [
            {"tool": gates.TFLITE, "latency_rounds_ms": [5.0, 6.0, 4.0], "latency_vs_runtime_fp32": 0.35},
            {"tool": aeq, "latency_rounds_ms": [5.0, 5.0, 5.0]},
            {"tool": gates.ONNX, "failed": "RuntimeError: boom"},
        ],
        "onnx_int8_optimizations_off": {"vs_optimized": onnx_on_off},
    }


def _gate(table: list[dict], issue: int, what: str, tool: str) -> dict:
    return next(g for g in table if g["issue"] == issue and g["gate"].startswith(what) and g["tool"] == tool)


def test_latency_vs_a_named_peer_is_the_median_of_per_round_ratios():
    table = gates.evaluate(_result("identical"))
    aeq = _gate(table, 5, "latency x the ai-edge-quantizer", gates.TFLITE)
    assert aeq["value"] == 1.0  # rounds 1.0, 1.2, 0.8, not the ratio of medians or of means
    assert aeq["met"] is True
    fp32 = _gate(table, 5, "latency x LiteRT", gates.TFLITE)
    assert (fp32["value"], fp32["met"]) == (0.35, False)


def test_failed_or_missing_rows_are_not_measured_rather_than_failed():
    table = gates.evaluate(_result("identical"))
    assert _gate(table, 4, "size", gates.ONNX)["met"] is None  # row failed
    assert _gate(table, 6, "latency", gates.TORCH)["met"] is None  # row absent
    assert "not measured" in "\n".join(gates.to_markdown(table))


def test_on_off_gate_reads_identical_as_met_and_a_low_sqnr_as_not():
    result = _result({"sqnr_db": 38.2})
    # A failed ONNX row means the artifact was not measured, whatever else the run recorded.
    assert _gate(gates.evaluate(result), 4, "optimizations on vs off", gates.ONNX)["met"] is None
    result["rows"][2] = {"tool": gates.ONNX}
    assert _gate(gates.evaluate(result), 4, "optimizations on vs off", gates.ONNX)["met"] is False
    result["onnx_int8_optimizations_off"] = {"vs_optimized": "identical"}
    same = _gate(gates.evaluate(result), 4, "optimizations on vs off", gates.ONNX)
    assert (same["value"], same["met"]) == ("identical", True)  # JSON has no Infinity
