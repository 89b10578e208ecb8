"""What ``exact_floats`` costs and buys: the 8-bit recipes' files with the runtimes' float kernels
and with the IR's bits, on every runtime.

A quantizer after a float op turns the runtime's last-ulp differences from the IR into
flipped integers, and the 8-bit layers after it grow them. A recipe's ``exact_floats``
(docs/decisions/0009-float64-layernorm.md) writes every GELU a quantizer reads in the rational
form of ``qexport.ir.gelu_rational`` (float32 ``+ - * /``, abs and relu only: the same bits in
every runtime) and runs such LayerNorms in float64 in the ONNX file (LiteRT has no float64;
torch's ``.pt2`` runs them in float64 either way). Both forms of each recipe come from the same
calibration; ``int8-full`` ships with it on, ``int8`` with it off. all-MiniLM-L6-v2, batch 1,
seq 128, 2 threads; latency interleaved round by round (``measure``) between the two forms of
one recipe's files on one runtime, one runtime after the other (with every runtime
interleaved, onnxruntime's files took ~17 ms instead of ~10: the others' worker threads still
spinning); accuracy mean-pooled over real tokens on the held-out sentences against torch fp32,
and against each file's own IR simulation.

    python -m benchmarks.float_forms [--samples 200]   # ~6 min; writes benchmarks/results/float_forms.{json,md}
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import peers
from benchmarks.measure import fp32_setup, interleaved_latency, ir_pooled, parity, ratio, samples_main

RECIPES = ("int8", "int8-full")
FORMS = {"runtime float kernels": False, "exact_floats": True}
RUNNERS = {
    "onnx": lambda path, held, one: peers._run_ort(path, held, one),
    "tflite": peers.litert_file,
    "torch": peers.torch_program,
}


def run(samples: int) -> dict[str, Any]:
    import qexport
    from qexport import backends
    from qexport.quant.recipe import resolve

    model_dir, calib, held, ref = fp32_setup(samples)
    one = {k: v[:1] for k, v in held.items()}
    graph = qexport.capture(model_dir, seq_len=128)
    work = Path(tempfile.mkdtemp(prefix="qexport-float-forms-"))
    rows: list[dict[str, Any]] = []
    rewritten: dict[str, int] = {}
    for recipe in RECIPES:
        for form, exact in FORMS.items():
            ir = qexport.quantize(graph, replace(resolve(recipe), exact_floats=exact), calibration=calib)
            rewritten[f"{recipe}, {form}"] = len(
                {n.name.split(".rational.")[0] for n in ir.nodes if ".rational." in n.name}
            )
            sim = ir_pooled(ir, held)
            rows.append({"recipe": recipe, "form": form, "file": "IR simulation", **parity(sim, ref)})
            for name, runner in RUNNERS.items():
                backend = backends.get(name)
                path = work / f"{recipe}-{len(rows)}{backend.suffix}"
                backend.lower(ir, path)
                result = runner(path, held, one)
                vs_ir = parity(result["pooled"], sim)["sqnr_db"]
                rows.append(
                    {"recipe": recipe, "form": form, "file": name, "_call": result["call"]}
                    | parity(result["pooled"], ref)
                    | {"sqnr_vs_ir_db": vs_ir}
                )
                print(f"{recipe}, {name}, {form}: {vs_ir} dB from its IR", flush=True)
        for name in RUNNERS:  # one runtime at a time: another's spinning threads slow it (above)
            timed = [r for r in rows if r["recipe"] == recipe and r["file"] == name]
            per_round = interleaved_latency({r["form"]: r.pop("_call") for r in timed})
            for row in timed:
                row["ms"] = round(float(np.median(per_round[row["form"]])), 2)
                row["vs_runtime_kernels"] = ratio(per_round, row["form"], "runtime float kernels")
    return {"samples": samples, "threads": 2, "rewritten_gelus": rewritten, "rows": rows}


def to_markdown(result: dict[str, Any]) -> str:
    rewritten = ", ".join(f"`{r}` {n}" for r, n in result["rewritten_gelus"].items())
    lines = [
        f"all-MiniLM-L6-v2, each recipe with and without `exact_floats` (GELUs in the rational form: {rewritten}); "
        f"batch 1, seq 128, {result['threads']} threads, {result['samples']} held-out sentences "
        f"(mean-pooled vs torch fp32); {result['cpu']}:",
        "",
        "| recipe | form | file | cosine mean | SQNR dB | vs its IR dB | ms | × runtime-kernels file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['recipe']} | {r['form']} | {r['file']} | {r['cos_mean']} | {r['sqnr_db']} | "
            f"{r.get('sqnr_vs_ir_db', '–')} | {r.get('ms', '–')} | {r.get('vs_runtime_kernels', '–')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    samples_main("float_forms", __doc__, run, to_markdown)


if __name__ == "__main__":
    main()
