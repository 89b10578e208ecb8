"""The torch deployables on this CPU: the exported ``model.pt2`` (``--to torch``) and its
AOTInductor package ``model.aoti.pt2`` (``--to torch-aoti``), beside torch eager fp32.

all-MiniLM-L6-v2, default recipe (int8) and fp32 from the same pipeline; batch 1, seq 128, 2
threads, latency interleaved round by round (``measure``); accuracy mean-pooled over real tokens
on the held-out sentences against torch fp32, and against the IR simulation. The same rows are
in ``tox -e bench`` (benchmarks/run.py); this section runs alone in a few minutes.

    python -m benchmarks.torch_files [--samples 200]   # writes benchmarks/results/torch_files.{json,md}
    python -m benchmarks.torch_files --isa avx2        # ... torch_files_avx2.{json,md}

``--isa avx2`` runs the same rows with every library capped at AVX2 (torch's kernels, oneDNN,
MKL, inductor's generated code), the GEMM choice ``--torch-gemm auto`` makes on an AVX2-only
CPU (``float``): the instruction set of an AVX2 server on this CPU's cores, caches and clocks.
It shows what the files cost on AVX2 code paths; an AVX2-only CPU's own speed it does not.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import peers
from benchmarks.measure import interleaved_latency, ir_pooled, minilm_texts, parity, ratio, write_results

EAGER = "torch eager fp32"
AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's own kernels and inductor's vector ISA
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "TORCHINDUCTOR_CPP_MARCH": "haswell",  # instead of -march=native
}
"""The environment that caps every library this benchmark runs at AVX2 (set before torch loads)."""


def run(samples: int, gemm: str = "auto") -> dict[str, Any]:
    import torch
    from transformers import AutoModel

    import qexport
    from qexport.backends import get
    from qexport.backends.torch import aoti
    from qexport.backends.torch.gemm import resolve_gemm

    torch.set_num_threads(2)
    model_dir, calib, held = minilm_texts(samples)
    one = {k: v[:1] for k, v in held.items()}
    hf = AutoModel.from_pretrained(str(model_dir)).eval()
    eager = peers._run_torch(lambda b: hf(**b).last_hidden_state, model_dir / "model.safetensors", held, one)
    ref = eager["pooled"]
    rows: list[dict[str, Any]] = [{"tool": EAGER, "_call": eager["call"], **parity(ref, ref)}]
    graph = qexport.capture(model_dir, seq_len=128)
    work = Path(tempfile.mkdtemp(prefix="qexport-torch-"))
    targets = [("torch", ".pt2", peers.torch_program)]
    if aoti.compiler() is not None:
        targets.append(("torch-aoti", ".aoti.pt2", peers.torch_aoti_package))
    for recipe in ("fp32", "int8"):
        ir = qexport.quantize(graph, recipe, calibration=calib)
        sim = ir_pooled(ir, held)
        for backend, suffix, load in targets:
            path = work / f"{recipe}{suffix}"
            start = time.monotonic()
            get(backend, gemm=gemm).lower(ir, path)
            seconds = time.monotonic() - start
            result = load(path, held, one)
            rows.append(
                {
                    "tool": f"qexport {recipe} ({suffix})",
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
        row["vs_eager"] = ratio(per_round, row["tool"], EAGER)
    return {"samples": samples, "threads": 2, "gemm": resolve_gemm(gemm), "rows": rows}


def to_markdown(result: dict[str, Any]) -> str:
    cap = f"; every library capped at AVX2 ({result['isa_cap']})" if result.get("isa_cap") else ""
    lines = [
        f"torch files, all-MiniLM-L6-v2, batch 1, seq 128, {result['threads']} threads, "
        f"{result['samples']} held-out sentences (mean-pooled vs torch fp32); {result['cpu']}{cap}; "
        f"integer GEMMs: {result['gemm']}:",
        "",
        "| file | cosine mean | SQNR dB | vs IR dB | ms | × torch eager fp32 | MB | write s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['tool']} | {r['cos_mean']} | {r['sqnr_db']} | {r.get('sqnr_vs_ir_db', '–')} | {r['ms']} | "
            f"{r['vs_eager']}× | {r.get('mb', '–')} | {r.get('lower_s', '–')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    args = parser.parse_args()
    capped = args.isa == "avx2"
    if capped and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        # the caps are read when the libraries load: start again with them set
        os.execve(
            sys.executable,
            [sys.executable, "-m", "benchmarks.torch_files", *sys.argv[1:]],
            {**os.environ, **AVX2_ENV},
        )
    from benchmarks.measure import cpu_description

    result = run(args.samples, gemm="float" if capped else "auto")
    result["cpu"] = cpu_description()
    if capped:
        result["isa_cap"] = " ".join(f"{k}={v}" for k, v in AVX2_ENV.items())
    write_results("torch_files_avx2" if capped else "torch_files", result, to_markdown(result))


if __name__ == "__main__":
    main()
