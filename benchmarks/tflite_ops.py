"""Where a .tflite file's latency goes: each operator timed alone, summed per operator type.

    python -m benchmarks.tflite_ops out/minilm/model.tflite [--threads 2] [--top 12]

LiteRT's Python interpreter has no op profiler, so every operator is cut out into a one-op
model (same tensors, buffers and options; its non-constant inputs become the model's inputs,
fed random floats or zero indices) and invoked with XNNPACK, median of ``--runs`` calls. The
sum comes within a few per cent of the whole file's latency on MiniLM (5.38 vs 5.45 ms), so the
split is usable; in a whole graph XNNPACK runs RESHAPEs as free views, which this overstates.
Compare files within one run: these machines drift.
"""

from __future__ import annotations

import argparse
import collections
import copy
import time
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb
from ai_edge_litert.interpreter import Interpreter

_OP_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


def _load(path: Path) -> Any:
    data = path.read_bytes()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
    for buf in model.buffers:  # files > 2 GB style (ai-edge-quantizer): data after the flatbuffer
        if getattr(buf, "offset", 0) > 1:
            buf.data = np.frombuffer(data[buf.offset : buf.offset + buf.size], np.uint8)
            buf.offset, buf.size = 0, 0
    return model


def _one_op_model(model: Any, index: int, runtime_inputs: list[int]) -> bytes:
    single = copy.copy(model)
    graph = copy.copy(model.subgraphs[0])
    op = graph.operators[index]
    graph.operators = [op]
    graph.inputs = np.asarray(runtime_inputs, np.int32)
    graph.outputs = np.asarray(op.outputs, np.int32)
    single.subgraphs, single.signatureDefs = [graph], []
    builder = flatbuffers.Builder(1024)
    builder.Finish(single.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _median_us(data: bytes, threads: int, runs: int) -> float:
    interp = Interpreter(model_content=data, num_threads=threads)
    interp.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in interp.get_input_details():
        if d["dtype"] == np.float32:
            interp.set_tensor(d["index"], rng.standard_normal(d["shape"]).astype(np.float32))
        else:  # indices and masks: zeros are in range for every table
            interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    for _ in range(20):
        interp.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - start)
    return 1e6 * float(np.median(times))


def profile(path: Path, threads: int = 2, runs: int = 200) -> list[tuple[float, str, str]]:
    """(µs, operator type, first output's name) for every operator with a run-time input."""
    model = _load(path)
    graph = model.subgraphs[0]
    codes = [_OP_NAMES[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in model.operatorCodes]

    def is_constant(t: int) -> bool:
        data = model.buffers[graph.tensors[t].buffer].data
        return data is not None and len(data) > 0

    rows = []
    for i, op in enumerate(graph.operators):
        runtime_inputs = [t for t in op.inputs if t >= 0 and not is_constant(t)]
        if not runtime_inputs:
            continue  # constant-folded at load (e.g. DEQUANTIZE of a weight)
        us = _median_us(_one_op_model(model, i, runtime_inputs), threads, runs)
        rows.append((us, codes[op.opcodeIndex], graph.tensors[op.outputs[0]].name.decode()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tflite", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--top", type=int, default=12, help="also list the slowest N operators")
    args = parser.parse_args()
    rows = profile(args.tflite, args.threads, args.runs)
    per_type: dict[str, list[float]] = collections.defaultdict(list)
    for us, kind, _ in rows:
        per_type[kind].append(us)
    print(
        f"{args.tflite}: {len(rows)} operators, sum of one-op medians {sum(r[0] for r in rows) / 1000:.2f} ms"
    )
    print("| operator | count | total ms | median µs |\n|---|---|---|---|")
    for kind, times in sorted(per_type.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {kind} | {len(times)} | {sum(times) / 1000:.3f} | {np.median(times):.1f} |")
    for us, kind, name in sorted(rows, reverse=True)[: args.top]:
        print(f"{us:8.1f} µs  {kind:18s} {name}")


if __name__ == "__main__":
    main()
