"""What ``--learn`` buys on all-MiniLM-L6-v2: every learnable recipe with and without it.

Calibrate (and learn) on the 128 calibration docstring sentences, evaluate on 200 held-out ones
(seq 128), mean-pooled last_hidden_state against the fp32 graph: the IR of each recipe, and for
``int8`` (the default static recipe) every backend's file, against fp32 and against its IR.
Also the time ``learn`` takes. Writes benchmarks/results/learn.{json,md}.

    python -m benchmarks.learn            # ~10 min on 2 cores
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import minilm_texts, parity, pooled, write_results

RECIPES = ("int8", "int8-mixed", "int8-full", "int16x8", "dynamic", "weight-only", "int8+distill")
BACKENDS = ("onnx", "tflite", "torch")
HELD_OUT = 200


def run(samples: int = HELD_OUT) -> dict[str, Any]:
    import qexport
    from qexport import backends
    from qexport.backends.cpu import cpuinfo
    from qexport.learn import learn
    from qexport.quant.calibration import load_calibration
    from qexport.quant.engine import quantize_graph
    from qexport.quant.recipe import resolve
    from qexport.reference.executor import run as reference

    model_dir, calib_inputs, held = minilm_texts(samples)
    graph = qexport.capture(model_dir)
    calib = load_calibration(graph, calib_inputs, seq_len=128, tokenizer_dir=None)

    def in_chunks(fn: Any) -> np.ndarray:
        parts = []
        for start in range(0, samples, 50):
            chunk = {k: v[start : start + 50] for k, v in held.items()}
            parts.append(pooled(fn(chunk)["last_hidden_state"], chunk["attention_mask"]))
        return np.concatenate(parts)

    fp32 = in_chunks(lambda c: reference(graph, c, simulate=False))
    rows: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    for name in RECIPES:
        recipe = resolve(name.removesuffix("+distill"))
        wanted = replace(recipe, learn=True, learn_epochs=20 if name.endswith("+distill") else 0)
        plain = quantize_graph(graph, recipe, calib)
        start = time.monotonic()
        learned = learn(graph, quantize_graph(graph, wanted, calib), wanted, calib)
        seconds = time.monotonic() - start
        for label, ir in (("", plain), ("--learn", learned)):
            ours = in_chunks(lambda c, ir=ir: reference(ir, c))
            rows.append(
                {
                    "recipe": name,
                    "learn": bool(label),
                    **parity(ours, fp32),
                    "learn_seconds": round(seconds, 1) if label else None,
                }
            )
            print(f"{name} {label}: {rows[-1]}", file=sys.stderr, flush=True)
            if name not in ("int8", "int8+distill") or (name != "int8" and not label):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                for target in BACKENDS:
                    backend = backends.get(target)
                    path = Path(tmp) / f"model{backend.suffix}"
                    backend.lower(ir, path)
                    out = in_chunks(lambda c, b=backend, p=path: b.run(p, c))
                    files.append(
                        {
                            "recipe": name,
                            "learn": bool(label),
                            "backend": target,
                            "vs_fp32": parity(out, fp32),
                            "vs_ir": parity(out, ours),
                        }
                    )
                    print(f"  {target}: {files[-1]}", file=sys.stderr, flush=True)
    return {
        "cpu": (cpuinfo() or {}).get("model name", "unknown"),
        "held_out": samples,
        "calibration": 128,
        "recipes": rows,
        "files": files,
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# `--learn` on all-MiniLM-L6-v2 ({result['cpu']})",
        "",
        f"Calibration and learning on {result['calibration']} docstring sentences; {result['held_out']} "
        "held-out ones at seq 128; mean-pooled last_hidden_state vs fp32.",
        "",
        "| recipe | learn | cosine mean / min | SQNR dB | learn time s |",
        "|---|---|---|---|---|",
    ]
    for r in result["recipes"]:
        lines.append(
            f"| {r['recipe']} | {'yes' if r['learn'] else 'no'} | {r['cos_mean']:.5f} / {r['cos_min']:.5f} "
            f"| {r['sqnr_db']:.2f} | {r['learn_seconds'] if r['learn_seconds'] is not None else ''} |"
        )
    lines += [
        "",
        "| file | recipe | learn | vs fp32 cos / SQNR dB | vs its IR SQNR dB |",
        "|---|---|---|---|---|",
    ]
    for f in result["files"]:
        lines.append(
            f"| {f['backend']} | {f['recipe']} | {'yes' if f['learn'] else 'no'} | {f['vs_fp32']['cos_mean']:.5f} / "
            f"{f['vs_fp32']['sqnr_db']:.2f} | {f['vs_ir']['sqnr_db']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    result = run()
    write_results("learn", result, to_markdown(result))


if __name__ == "__main__":
    main()
