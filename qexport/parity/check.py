"""``qexport check OUT``: run every artifact with its real runtime and gate on parity.

Comparisons (per model output): torch fp32 vs IR float (capture fidelity), torch fp32 vs IR
simulation (quantization error), IR simulation vs each artifact (lowering + kernel error),
torch fp32 vs each artifact (what ships — the gated one), and artifacts pairwise. With one IR
per recipe (the default command), each artifact is compared with the simulation of its own IR,
named ``ir_simulated:RECIPE``.
Writes parity.json, junit.xml and report.md into OUT. Keys are documented in docs/parity.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qexport.atomic import write_bytes
from qexport.errors import QExportError, UsageError
from qexport.integrity import verify_outdir
from qexport.ir import serde
from qexport.outdir import ir_entries
from qexport.parity.junit import junit_xml
from qexport.parity.metrics import compare

EVAL_TEXT = Path(__file__).resolve().parents[1] / "data" / "evaluation_sentences.txt"
Step = Callable[[str], AbstractContextManager[Any]]


@dataclass(frozen=True)
class Thresholds:
    """Documented defaults (docs/parity.md); applied to torch fp32 vs each artifact."""

    min_cos: float = 0.995
    min_sqnr: float = 20.0
    min_agreement: float = 0.99


def load_thresholds(pyproject: Path | None, **flags: float | None) -> Thresholds:
    """Defaults, overridden by [tool.qexport.check] in pyproject.toml, overridden by flags."""
    import tomllib

    values = asdict(Thresholds())
    if pyproject is not None and pyproject.is_file():
        try:
            section = (
                tomllib.loads(pyproject.read_text(encoding="utf-8"))
                .get("tool", {})
                .get("qexport", {})
                .get("check", {})
            )
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{pyproject}: unreadable ({exc})") from None
        unknown = set(section) - set(values)
        if unknown:
            raise UsageError(
                f"{pyproject}: [tool.qexport.check] has unknown keys {sorted(unknown)}; known: {sorted(values)}"
            )
        values.update({k: float(v) for k, v in section.items()})
    values.update({k: float(v) for k, v in flags.items() if v is not None})
    for key in ("min_cos", "min_agreement"):
        if not 0.0 <= values[key] <= 1.0:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} must be between 0 and 1 (a fraction), got {values[key]}")
    return Thresholds(**values)


def _fingerprint(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode() + np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()[:16]


def evaluation_inputs(
    graph: Any, data: Path | None, seq_len: int, tokenizer_dir: Path | None
) -> tuple[dict, str]:
    from qexport.frontend.text import read_lines, tokenize
    from qexport.quant.calibration import check_arrays, random_tokens

    if data is not None and Path(data).suffix.lower() == ".npz":
        try:
            with np.load(data, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError) as exc:
            raise QExportError(f"{data}: not a readable .npz ({exc})") from None
        return check_arrays(graph, arrays, str(data)), f"npz:{Path(data).name}"
    if data is None and tokenizer_dir is None:
        arrays = random_tokens(graph, seq_len, samples=16)
        rng = np.random.default_rng(1)  # disjoint from the calibration fallback (seed 0)
        arrays["input_ids"] = rng.integers(
            1, int(arrays["input_ids"].max()) + 1, arrays["input_ids"].shape
        ).astype(arrays["input_ids"].dtype)
        return arrays, "random-tokens(seed 1)"
    path = Path(data) if data is not None else EVAL_TEXT
    if tokenizer_dir is None:
        raise QExportError(f"{path}: text evaluation data needs a tokenizer; pass --tokenizer DIR")
    lines = read_lines(path)
    return tokenize(
        lines, tokenizer_dir, seq_len, list(graph.inputs)
    ), f"text:{path.name} ({len(lines)} lines)"


def _batched(
    fn: Callable[[dict], dict], inputs: dict[str, np.ndarray], size: int = 8
) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    total = len(next(iter(inputs.values())))
    for start in range(0, total, size):
        out = fn({k: v[start : start + size] for k, v in inputs.items()})
        for key, value in out.items():
            parts.setdefault(key, []).append(np.asarray(value))
    return {k: np.concatenate(v) for k, v in parts.items()}


def quantized_reference(captured: Any) -> Any:
    """The torch module of a source PyTorch quantized itself (None for float sources)."""
    source = captured.source
    if source.quantized is None:
        return None
    return source.quantized.reference(source.module)


def check_outdir(
    out: Path,
    *,
    data: Path | None = None,
    thresholds: Thresholds = Thresholds(),
    captured: Any = None,
    tokenizer: Path | None = None,
    trust_pickle: bool = False,
    config: Path | None = None,
    step: Step | None = None,
    bisect: bool = False,
) -> dict[str, Any]:
    """Run the comparisons; write parity.json, junit.xml, report.md; return the parity doc."""
    import torch

    from qexport import backends
    from qexport.frontend.pipeline import capture_source
    from qexport.reference.executor import run

    step = step or (lambda _label: nullcontext())
    out = Path(out)
    manifest = verify_outdir(out)
    ir_files = [e["file"] for e in ir_entries(manifest)]
    graphs = {f: serde.load(out / f) for f in ir_files}
    graph = graphs[ir_files[0]]
    sim_name = {
        f: "ir_simulated" if len(ir_files) == 1 else f"ir_simulated:{g.metadata['recipe']['name']}"
        for f, g in graphs.items()
    }
    seq_len = int(manifest["shapes"]["seq_len"])
    if captured is None:
        with step("re-capturing the fp32 source for reference"):
            source = manifest["source"]
            src = source["path"]
            config = config or (Path(source["config"]) if source.get("config") else None)
            trust_pickle = trust_pickle or bool(source.get("trust_pickle"))
            try:
                captured = capture_source(src, seq_len=seq_len, config=config, trust_pickle=trust_pickle)
            except QExportError as exc:
                raise QExportError(f"cannot load the fp32 source named in the manifest ({exc})") from None
        if captured.source.sha256 != manifest["source"]["sha256"]:
            raise QExportError(
                f"{manifest['source']['path']}: changed since conversion (sha256 differs); re-run it"
            )
    inputs, origin = evaluation_inputs(graph, data, seq_len, tokenizer or captured.source.tokenizer_dir)
    mask = inputs.get("attention_mask")
    reference_module = captured.reference_module or captured.exported.program.module()

    def torch_outputs(module: Any) -> Callable[[dict], dict]:
        def call(batch: dict) -> dict:
            with torch.no_grad():
                result = module(**{k: torch.from_numpy(v) for k, v in batch.items()})
            if isinstance(result, dict):  # a transformers ModelOutput
                result = list(result.values())
            return dict(zip(graph.outputs, (r.numpy() for r in result), strict=True))

        return call

    # A run-time range over the whole tensor depends on what else is in the batch: then every
    # runner sees one sample at a time, as a deployed model does (and the TFLite file must).
    # A program with a static batch of 1 (a pt2e .pt2 as exported) takes one sample at a time too.
    size = (
        1
        if any(s.dynamic and s.axis is None for g in graphs.values() for s in g.quant.values())
        or any(info.shape[:1] == (1,) for info in graph.inputs.values())
        else 8
    )
    with step(
        f"running torch fp32, the IR float and simulated ({len(mask) if mask is not None else '?'} samples)"
    ):
        results = {
            "torch_fp32": _batched(torch_outputs(reference_module), inputs, size),
            "ir_float": _batched(lambda b: run(captured.graph, b, simulate=False), inputs, size),
        }
        # the model PyTorch quantized, as PyTorch runs it: what its user compares against
        source_quantized = quantized_reference(captured)
        if source_quantized is not None:
            results["torch_quantized"] = _batched(torch_outputs(source_quantized), inputs, size)
        for file, g in graphs.items():
            results[sim_name[file]] = _batched(lambda b, g=g: run(g, b), inputs, size)
    for artifact in manifest["artifacts"]:
        backend = backends.get(artifact["backend"])
        with step(f"running {artifact['file']} with {backend.name}"):
            results[artifact["backend"]] = _batched(
                lambda b, be=backend, a=artifact: be.run(out / a["file"], b), inputs, size
            )

    gate = "torch_quantized" if "torch_quantized" in results else "torch_fp32"
    pairs = [("torch_fp32", "ir_float")] + [("torch_fp32", sim_name[f]) for f in ir_files]
    if gate == "torch_quantized":
        pairs += [("torch_fp32", "torch_quantized")] + [(gate, sim_name[f]) for f in ir_files]
    names = [a["backend"] for a in manifest["artifacts"]]
    pairs += [(sim_name[a.get("ir", ir_files[0])], a["backend"]) for a in manifest["artifacts"]]
    pairs += [(gate, n) for n in names]
    if gate != "torch_fp32":
        pairs += [("torch_fp32", n) for n in names]
    pairs += [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    comparisons = []
    for ref_name, cand_name in pairs:
        for output in graph.outputs:
            metrics = compare(
                results[cand_name][output], results[ref_name][output], mask, logits=output == "logits"
            )
            comparisons.append({"reference": ref_name, "candidate": cand_name, "output": output, **metrics})

    cases = []
    for row in comparisons:
        if row["reference"] != gate or row["candidate"] not in names:
            continue
        failures = []
        if row["cos_mean"] < thresholds.min_cos:
            failures.append(f"cosine mean {row['cos_mean']:.5f} < {thresholds.min_cos}")
        if row["sqnr_db"] < thresholds.min_sqnr:
            failures.append(f"SQNR {row['sqnr_db']:.2f} dB < {thresholds.min_sqnr}")
        if "top1_agreement" in row and row["top1_agreement"] < thresholds.min_agreement:
            failures.append(f"top-1 agreement {row['top1_agreement']:.4f} < {thresholds.min_agreement}")
        if row.get("nonfinite"):
            failures.append(f"{row['nonfinite']} non-finite values")
        row["pass"] = not failures
        row["failures"] = failures
        cases.append(
            {
                "name": f"{row['candidate']}.{row['output']}",
                "classname": "qexport.parity",
                "failure": "; ".join(failures) or None,
                "properties": {k: row[k] for k in ("cos_mean", "cos_min", "sqnr_db", "max_abs")},
            }
        )
    doc = {
        "version": 1,
        "passed": all(c["failure"] is None for c in cases),
        "thresholds": asdict(thresholds),
        "evaluation": {
            "origin": origin,
            "samples": len(next(iter(inputs.values()))),
            "fingerprint": _fingerprint(inputs),
        },
        "calibration": manifest.get("calibration"),
        "recipe": manifest.get("recipe"),
        "irs": [{"file": e["file"], "recipe": e.get("recipe")} for e in ir_entries(manifest)],
        "comparisons": comparisons,
    }
    if bisect:
        with step("bisecting layer by layer"):
            doc["bisect"] = _bisect(out, manifest, captured.graph, graphs, inputs)
    write_bytes(out / "parity.json", (json.dumps(doc, indent=2, allow_nan=True) + "\n").encode())
    write_bytes(out / "junit.xml", junit_xml(cases))
    write_bytes(out / "report.md", render_markdown(doc).encode())
    return doc


def _bisect(
    out: Path, manifest: dict, float_graph: Any, graphs: dict[str, Any], inputs: dict, samples: int = 4
) -> dict:
    """Per-value SQNR for every backend that exposes intermediates, against its own IR; a verdict and a plot each."""
    from qexport import backends
    from qexport.parity.bisect import plot, trace, verdict
    from qexport.reference.executor import run

    chunk = {k: v[:samples] for k, v in inputs.items()}
    mask = chunk.get("attention_mask")
    order = [n.outputs[0] for n in float_graph.nodes]
    fp32 = run(float_graph, chunk, simulate=False, keep=order)
    first = next(iter(graphs))
    simulations = {f: run(g, chunk, keep=order) for f, g in graphs.items()}
    result: dict[str, Any] = {}
    targets = [(a["backend"], a["file"], a.get("ir", first)) for a in manifest["artifacts"]]
    for name, file, ir_file in targets or [("ir", None, first)]:
        simulated = simulations[ir_file]
        backend_values = None
        if file is not None:
            backend = backends.get(name)
            if hasattr(backend, "run_intermediates"):
                backend_values = backend.run_intermediates(out / file, chunk, order)
        points = trace(order, fp32, simulated, backend_values, mask)
        picture = f"bisect_{name}.png"
        plot(points, f"qexport bisect: {name}", str(out / picture))
        result[name] = {
            "verdict": verdict(points),
            "plot": picture,
            "points": [
                {
                    "value": p.value,
                    "quantization_db": round(p.quantization_db, 2),
                    "lowering_db": None if p.lowering_db is None else round(p.lowering_db, 2),
                }
                for p in points
            ],
        }
    return result


def _has_top1(doc: dict[str, Any]) -> bool:
    return any("top1_agreement" in r for r in doc["comparisons"])


def render_markdown(doc: dict[str, Any]) -> str:
    t = doc["thresholds"]
    lines = [
        f"# qexport parity — {'PASS' if doc['passed'] else 'FAIL'}",
        "",
        f"Evaluation: {doc['evaluation']['origin']}, {doc['evaluation']['samples']} samples, "
        f"fingerprint {doc['evaluation']['fingerprint']}."
        + (
            f" Calibration: {doc['calibration']['origin']} (fingerprint {doc['calibration']['fingerprint']})."
            if doc.get("calibration")
            else ""
        ),
        f"Gate: torch fp32 vs each artifact, cosine mean ≥ {t['min_cos']}, SQNR ≥ {t['min_sqnr']} dB"
        + (f", top-1 agreement ≥ {t['min_agreement']} (logits)." if _has_top1(doc) else "."),
        "",
        "| reference | candidate | output | cos mean | cos min | SQNR dB | max abs | top-1 | gate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["comparisons"]:
        gate = "" if "pass" not in r else ("pass" if r["pass"] else "**FAIL**: " + "; ".join(r["failures"]))
        top1 = f"{r['top1_agreement']:.4f}" if "top1_agreement" in r else ""
        lines.append(
            f"| {r['reference']} | {r['candidate']} | {r['output']} | {r['cos_mean']:.5f} | "
            f"{r['cos_min']:.5f} | {r['sqnr_db']:.2f} | {r['max_abs']:.3g} | {top1} | {gate} |"
        )
    for name, b in (doc.get("bisect") or {}).items():
        v = b["verdict"]
        lines += [
            "",
            f"## Bisect: {name}",
            "",
            (
                "No value falls below the floor."
                if v["kind"] == "none"
                else f"Error opens up at **{v['value']}** (layer {v['layer']}): **{v['kind']}** "
                f"(quantization {v['quantization_db']:.1f} dB, lowering "
                f"{'n/a' if v['lowering_db'] is None else format(v['lowering_db'], '.1f')} dB)."
            ),
            "",
            f"![per-layer SQNR]({b['plot']})",
        ]
    return "\n".join(lines) + "\n"
