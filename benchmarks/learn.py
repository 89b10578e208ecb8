"""What ``--learn`` buys on all-MiniLM-L6-v2: every learnable recipe with and without it.

Without ``--learn`` each recipe calibrates on the 128 calibration docstring sentences (as every
other section does); with it, on the learning text (``learn_text``: those 128, the task's
training sentences and qexport's built-in learning sentences — none held out anywhere).
Evaluation on 200 held-out sentences (seq 128), mean-pooled last_hidden_state against the fp32
graph: the IR of each recipe, and for ``int8`` (the default static recipe) and ``npu-int8`` (the
full-integer one) every backend's file, against fp32 and against its IR. Also the conversion time (calibration + learning).
Writes benchmarks/results/learn.{json,md}.

    python -m benchmarks.learn            # ~45 min on 2 cores
    python -m benchmarks.learn npu-int8   # only its rows, merged into the last results
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import cpu_description, minilm_texts, parity, pooled, write_results

ROOT = Path(__file__).resolve().parents[1]
RECIPES = (
    "int8",
    "int8-mixed",
    "int8-full",
    "int16x8",
    "dynamic",
    "weight-only",
    "npu-int16",
    "npu-mixed",
    "npu-int8",
)
BACKENDS = ("onnx", "tflite", "torch")
# The recipes whose files are measured too: the static CPU ones (issue #26 asks that every
# backend's file of a learned IR stay >= 40 dB from it, TFLite >= 35), and the full-integer one
# (which ExecuTorch's XNNPACK also runs in int8).
FILES = {
    **dict.fromkeys(("int8", "int8-mixed", "int8-full", "int16x8"), BACKENDS),
    "npu-int8": (*BACKENDS, "executorch"),
}
HELD_OUT = 200


def learn_text() -> list[str]:
    """What ``--learn`` calibrates on here: the 128 calibration sentences, the task's training
    sentences (benchmarks/task.py) that are not held out, then qexport/data/learn_sentences.txt."""
    from benchmarks.task import load_task
    from qexport.frontend.text import read_lines
    from qexport.quant.calibration import LEARN_TEXT

    doc = read_lines(ROOT / "fixtures" / "docstring_sentences.txt")
    texts, _, test, _ = load_task(set(doc[:128]))
    held = set(doc[128:])
    return (
        doc[:128]
        + [t for t, is_test in zip(texts, test, strict=True) if not is_test and t not in held]
        + (read_lines(LEARN_TEXT))
    )


def run(samples: int = HELD_OUT, recipes: tuple[str, ...] = RECIPES) -> dict[str, Any]:
    import qexport
    from qexport import backends
    from qexport.frontend.text import tokenize
    from qexport.learn import for_ranges, learn
    from qexport.quant.calibration import load_calibration
    from qexport.quant.engine import quantize_graph
    from qexport.quant.recipe import resolve
    from qexport.reference.executor import run as reference

    model_dir, calib_inputs, held = minilm_texts(samples)
    graph = qexport.capture(model_dir)
    calib = load_calibration(graph, calib_inputs, seq_len=128, tokenizer_dir=None)
    text = learn_text()
    learn_inputs = tokenize(text, model_dir, 128, list(graph.inputs))

    def in_chunks(fn: Any) -> np.ndarray:
        parts = []
        for start in range(0, samples, 50):
            chunk = {k: v[start : start + 50] for k, v in held.items()}
            parts.append(pooled(fn(chunk)["last_hidden_state"], chunk["attention_mask"]))
        return np.concatenate(parts)

    fp32 = in_chunks(lambda c: reference(graph, c, simulate=False))
    rows: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    for name in recipes:
        recipe = resolve(name)
        wanted = replace(recipe, learn=True)
        plain = quantize_graph(graph, recipe, calib)
        start = time.monotonic()  # what `qexport --learn` spends: calibration and learning
        learning = load_calibration(graph, learn_inputs, seq_len=128, tokenizer_dir=None, learning=True)
        learned = learn(graph, quantize_graph(graph, wanted, for_ranges(learning)), wanted, learning)
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
            with tempfile.TemporaryDirectory() as tmp:
                for target in FILES.get(name, ()):
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
        "cpu": cpu_description(),
        "held_out": samples,
        "calibration": 128,
        "learn_calibration": len(text),
        "recipes": rows,
        "files": files,
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# `--learn` on all-MiniLM-L6-v2 ({result['cpu']})",
        "",
        f"Calibration on {result['calibration']} docstring sentences without `--learn`, on "
        f"{result['learn_calibration']} with it (`benchmarks.learn.learn_text`); {result['held_out']} "
        "held-out ones at seq 128; mean-pooled last_hidden_state vs fp32.",
        "",
        "| recipe | learn | cosine mean / min | SQNR dB | conversion s (calibration + learning) |",
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
    for note in result.get("notes", []):  # written by hand into learn.json: how a run went
        lines.append(f"\n{note}")
    for name, when in result.get("merged", {}).items():
        lines.append(f"\n`{name}`'s rows re-measured alone on {when} (`python -m benchmarks.learn {name}`).")
    return "\n".join(lines) + "\n"


def main() -> None:
    """``python -m benchmarks.learn [RECIPE ...]``: every recipe, or only these rows merged into
    the last results (a merge from another CPU is stamped with it)."""
    import json

    wanted = tuple(sys.argv[1:])
    unknown = [name for name in wanted if name not in RECIPES]
    if unknown:
        raise SystemExit(
            f"unknown recipe {', '.join(unknown)}; the benchmark's recipes: {', '.join(RECIPES)}"
        )
    result = run(recipes=wanted or RECIPES)
    if wanted:
        old = json.loads((Path(__file__).parent / "results" / "learn.json").read_text())
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        if old["cpu"] != result["cpu"]:  # SQNR does not depend on the CPU; conversion time does
            stamp += f" on {result['cpu']} (the other rows' CPU: {old['cpu']}; compare its conversion time with care)"
        for key in ("recipes", "files"):
            mine = {(r["recipe"], r["learn"], r.get("backend")): r for r in result[key]}
            rest = [r for r in old[key] if r["recipe"] not in wanted]
            result[key] = sorted(rest + list(mine.values()), key=lambda r: RECIPES.index(r["recipe"]))
        result["notes"] = old.get("notes", [])
        result["cpu"] = old["cpu"]
        result["merged"] = {**old.get("merged", {}), **{name: stamp for name in wanted}}
    write_results("learn", result, to_markdown(result))


if __name__ == "__main__":
    main()
