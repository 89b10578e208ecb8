"""ExecuTorch (the runtime PyTorch models take to phones): qexport's ``--to executorch`` files
(recipes ``dynamic`` and ``npu-int8``), each beside the fp32 ``.pte`` from the same IR, and the
route users take today.

Every program runs in ExecuTorch's own runtime (``executorch.runtime``) at batch 1, seq 128, on
this machine's CPU with XNNPACK; latency is interleaved round by round (``measure``). The peer
is ExecuTorch's documented int8 route on the Hugging Face model: pt2e with its
``XNNPACKQuantizer`` (dynamic, per channel), then the XNNPACK partitioner; a crash is reported
as what it is. Accuracy is mean-pooled over real tokens against torch fp32.

    python -m benchmarks.executorch [--samples 32]   # writes benchmarks/results/executorch.{json,md}
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import interleaved_latency, minilm_texts, parity, pooled, ratio

ROOT = Path(__file__).resolve().parents[1]
# XNNPACK's two int8 Linears: dynamic (qd8) and static (qs8, the full-integer NPU recipe)
RECIPES = ("dynamic", "npu-int8")


def _peer(model_dir: Path, example: dict[str, Any], path: Path) -> Path:
    """ExecuTorch's int8 route on the Hugging Face BertModel (NPU-NOTES: crashes in calibration)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir)).eval()
    exported = torch.export.export(model, (), example)
    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    prepared = prepare_pt2e(exported.module(), quantizer)
    prepared(**example)
    program = torch.export.export(convert_pt2e(prepared), (), example)
    path.write_bytes(
        to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    )
    return path


def section(
    model_dir: Path, calib: dict[str, np.ndarray], held_out: dict[str, np.ndarray], work: Path
) -> dict:
    import torch

    import qexport
    from qexport.backends.executorch import ExecutorchBackend
    from qexport.backends.executorch.backend import build_program

    backend = ExecutorchBackend()
    graph = qexport.capture(model_dir, seq_len=128)
    mask = held_out["attention_mask"]
    fp32 = pooled(
        np.concatenate(
            [
                qexport.run_reference(graph, {k: v[s : s + 8] for k, v in held_out.items()}, simulate=False)[
                    "last_hidden_state"
                ]
                for s in range(0, len(mask), 8)
            ]
        ),
        mask,
    )
    irs, files, base = {}, {}, {}  # program -> its IR, its file, the fp32 program it is timed against
    for recipe in RECIPES:
        ir = qexport.quantize(graph, recipe, calibration=calib)
        tool, fp32_tool = f"qexport {recipe} (--to executorch)", f"fp32 .pte ({recipe} IR)"
        irs[tool], files[tool], base[tool] = ir, work / f"qexport_{recipe}.pte", fp32_tool
        backend.lower(ir, files[tool])
        files[fp32_tool] = work / f"fp32_{recipe}.pte"  # the same IR and lowering, no quantization
        files[fp32_tool].write_bytes(build_program(ir, quantize=False).buffer)
    rows: list[dict[str, Any]] = []
    example = {k: torch.from_numpy(v[:1]) for k, v in held_out.items()}
    try:
        peer = "ExecuTorch pt2e + XNNPACKQuantizer on the HF model"
        files[peer] = _peer(model_dir, example, work / "peer.pte")
        base[peer] = "fp32 .pte (dynamic IR)"  # the peer's recipe
    except Exception as exc:  # the peer's failure is the finding
        rows.append(
            {
                "tool": "ExecuTorch pt2e + XNNPACKQuantizer on the HF model",
                "failed": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300],
            }
        )
    programs = {tool: backend.load(path) for tool, path in files.items()}
    calls = {}
    for tool, program in programs.items():
        forward = program.load_method("forward")
        feed = [example[n] for n in _input_names(program, example)]
        calls[tool] = lambda f=forward, x=feed: f.execute(x)
        hidden = _hidden(program, held_out)
        row = {
            "tool": tool,
            "mb": round(files[tool].stat().st_size / 1e6, 1),
            **parity(pooled(hidden, mask), fp32),
        }
        if tool in irs:
            simulated = np.concatenate(
                [
                    qexport.run_reference(irs[tool], {k: v[i : i + 1] for k, v in held_out.items()})[
                        "last_hidden_state"
                    ]
                    for i in range(len(mask))
                ]
            )
            row["sqnr_vs_ir_db"] = parity(pooled(hidden, mask), pooled(simulated, mask))["sqnr_db"]
        rows.append(row)
    per_round = interleaved_latency(calls, rounds=8, runs=10)
    for row in rows:
        if row["tool"] in per_round:
            row["ms"] = round(float(np.median(per_round[row["tool"]])), 2)
            row["vs_fp32_pte"] = ratio(per_round, row["tool"], base.get(row["tool"], row["tool"]))
    return {"samples": len(mask), "threads": "XNNPACK default", "rows": rows}


def _input_names(program: Any, available: dict[str, Any]) -> list[str]:
    """A qexport .pte says what it takes (constant method ``input_names``); the peer's program
    takes the Hugging Face model's inputs in its signature's order."""
    if "input_names" in program.method_names:
        return list(program.load_method("input_names").execute([]))
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in available]


def _hidden(program: Any, held_out: dict[str, np.ndarray]) -> np.ndarray:
    """last_hidden_state, one sentence at a time (the programs have batch 1)."""
    import torch

    forward = program.load_method("forward")
    names = _input_names(program, held_out)
    rows = [
        forward.execute([torch.from_numpy(held_out[n][i : i + 1]) for n in names])[0].numpy()
        for i in range(len(held_out["input_ids"]))
    ]
    return np.concatenate(rows)


def to_markdown(result: dict[str, Any], cpu: str) -> str:
    lines = [
        f"ExecuTorch 1.5 runtime (XNNPACK), all-MiniLM-L6-v2, batch 1, seq 128, {result['samples']} "
        f"held-out sentences, mean-pooled vs torch fp32; {cpu}:",
        "",
        "| program | cosine mean | SQNR dB | vs IR dB | ms | vs fp32 .pte | MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "failed" in r:
            lines.append(f"| {r['tool']} | failed: {r['failed'][:140]} | | | | | |")
            continue
        lines.append(
            f"| {r['tool']} | {r['cos_mean']} | {r['sqnr_db']} | {r.get('sqnr_vs_ir_db', '–')} | "
            f"{r.get('ms', '–')} | {r.get('vs_fp32_pte', '–')}x | {r['mb']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    from benchmarks.measure import cpu_description

    model_dir, calib, held_out = minilm_texts(args.samples)
    result = section(model_dir, calib, held_out, Path(tempfile.mkdtemp(prefix="qexport-et-")))
    result["cpu"] = cpu_description()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "executorch.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "executorch.md").write_text(to_markdown(result, result["cpu"]))
    print(to_markdown(result, result["cpu"]))


if __name__ == "__main__":
    main()
