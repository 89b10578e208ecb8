"""int8-mixed's files with the runtimes' own GELU and with the rational GELU, on every runtime.

``int8-mixed`` quantizes three GELU outputs (its int16 FFN-down inputs) to int16. Since
2026-12-07 the quantizer writes those GELUs in the rational form of
``qexport.ir.gelu_rational`` (float32 ``+ - * /``, abs and relu only, the same bits in every
runtime); the other form keeps the GELU op, which each runtime computes its own way. Both IRs
come from the same calibration; the old one by turning the rewrite off for this script only.
all-MiniLM-L6-v2, batch 1, seq 128, 2 threads, latency interleaved round by round
(``measure``) between the two files of one runtime, one runtime after the other (interleaved
with LiteRT's and torch's files too, onnxruntime's took ~17 ms instead of ~10: the others'
worker threads still spinning); accuracy mean-pooled over real tokens on the held-out sentences against torch
fp32, and against each file's own IR simulation.

    python -m benchmarks.gelu_rational [--samples 200]   # writes benchmarks/results/gelu_rational.{json,md}
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from benchmarks import peers
from benchmarks.measure import interleaved_latency, ir_pooled, minilm_texts, parity, ratio, samples_main

RECIPE = "int8-mixed"
FORMS = ("runtime GELU", "rational GELU")
RUNNERS = {
    "onnx": lambda path, held, one: peers._run_ort(path, held, one),
    "tflite": peers.litert_file,
    "torch": peers.torch_program,
}


def _irs(graph: Any, calib: dict[str, np.ndarray]) -> dict[str, Any]:
    import qexport

    with mock.patch("qexport.quant.engine.gelus_read_in_int16", return_value=[]):
        runtime = qexport.quantize(graph, RECIPE, calibration=calib)
    return {"runtime GELU": runtime, "rational GELU": qexport.quantize(graph, RECIPE, calibration=calib)}


def run(samples: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModel

    import qexport
    from qexport import backends

    torch.set_num_threads(2)
    model_dir, calib, held = minilm_texts(samples)
    one = {k: v[:1] for k, v in held.items()}
    hf = AutoModel.from_pretrained(str(model_dir)).eval()
    ref = peers._run_torch(lambda b: hf(**b).last_hidden_state, model_dir / "model.safetensors", held, one)[
        "pooled"
    ]
    graph = qexport.capture(model_dir, seq_len=128)
    irs = _irs(graph, calib)
    rational_nodes = sum(".rational." in n.name for n in irs["rational GELU"].nodes)
    work = Path(tempfile.mkdtemp(prefix="qexport-gelu-rational-"))
    rows: list[dict[str, Any]] = []
    for form, ir in irs.items():
        sim = ir_pooled(ir, held)
        rows.append({"file": "IR simulation", "form": form, **parity(sim, ref)})
        for name, runner in RUNNERS.items():
            backend = backends.get(name)
            path = work / f"{form.split()[0]}{backend.suffix}"
            backend.lower(ir, path)
            result = runner(path, held, one)
            rows.append(
                {
                    "file": name,
                    "form": form,
                    "_call": result["call"],
                    **parity(result["pooled"], ref),
                    "sqnr_vs_ir_db": parity(result["pooled"], sim)["sqnr_db"],
                }
            )
            print(f"{name}, {form}: {rows[-1]['sqnr_vs_ir_db']} dB from its IR", flush=True)
    for name in RUNNERS:  # one runtime at a time: another's spinning threads slow it (below)
        timed = [r for r in rows if r["file"] == name]
        per_round = interleaved_latency({r["form"]: r.pop("_call") for r in timed})
        for row in timed:
            row["ms"] = round(float(np.median(per_round[row["form"]])), 2)
            row["vs_runtime_gelu"] = ratio(per_round, row["form"], "runtime GELU")
    return {
        "samples": samples,
        "threads": 2,
        "recipe": RECIPE,
        "rational_nodes": rational_nodes,
        "rows": rows,
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"`{result['recipe']}` on all-MiniLM-L6-v2 with the runtimes' GELU and with the rational GELU "
        f"({result['rational_nodes']} elementwise nodes for its 3 int16-read GELUs); batch 1, seq 128, "
        f"{result['threads']} threads, {result['samples']} held-out sentences (mean-pooled vs torch fp32); "
        f"{result['cpu']}:",
        "",
        "| file | GELU | cosine mean | SQNR dB | vs its IR dB | ms | × runtime-GELU file |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['file']} | {r['form']} | {r['cos_mean']} | {r['sqnr_db']} | {r.get('sqnr_vs_ir_db', '–')} | "
            f"{r.get('ms', '–')} | {r.get('vs_runtime_gelu', '–')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    samples_main("gelu_rational", __doc__, run, to_markdown)


if __name__ == "__main__":
    main()
