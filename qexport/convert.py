"""The main job: source -> IR -> (quantized IR) -> one artifact per backend -> manifest.

``convert`` is what ``qexport SRC --to ... -o OUT`` calls. It validates every argument
before doing work, writes into a staging folder and publishes only complete results.

Without ``--recipe`` each target gets its fast recipe (``Backend.default_recipe``: TFLite's
integer kernels need ``dynamic``, onnxruntime's and torch's need ``int8``). Every recipe used
is one exact IR: the first is ``model.qir``, the others ``model.<recipe>.qir``, and each
artifact names the IR it was lowered from (docs/qir-format.md, "One IR per recipe").
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qexport import backends
from qexport.errors import UsageError
from qexport.ir import serde
from qexport.outdir import MANIFEST, StagedOutput
from qexport.report.notes import as_note

DEFAULT_RECIPE = "int8"

Step = Callable[[str], AbstractContextManager[Any]]


@dataclass(frozen=True)
class ConvertOptions:
    """Everything ``convert`` needs besides SRC and OUT."""

    to: Sequence[str] = ()
    seq_len: int = 128
    recipe: str | None = None  # None: each target's fast recipe (Backend.default_recipe)
    calib: Path | None = None
    tokenizer: Path | None = None
    config: Path | None = None
    trust_pickle: bool = False
    integer_io: bool = False  # TFLite: integer model inputs/outputs (full-integer graphs only)
    torch_gemm: str = "auto"  # torch: int8 (torch._int_mm), float, or auto (this CPU decides)
    onnx_linears: str = "integer"  # onnx: integer (exact fused or not) or qdq (plain, faster fused)
    device: str = "cpu"  # "npu": full-integer files (recipe NPU_RECIPE unless --recipe is given)
    learn: bool = False  # learn each recipe's params from the calibration data (docs/learning.md)
    strict_params: bool = False  # a quantized source a backend cannot keep exactly: refuse, not re-quantize


DEVICES = ("cpu", "npu")
NPU_RECIPE = "npu-int16"
"""What ``--for npu`` uses: every value int8/int16 (docs/integer.md); int16 activations hold
MiniLM at 29 dB from fp32 where 8 bits collapse it, and Ethos-U takes 99 % of the file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_targets(text: str | None) -> list[str]:
    """``"tflite,onnx"`` -> ["tflite", "onnx"], checked against the registry."""
    if text is None:
        return backends.default_targets()
    if text.strip().lower() in ("", "none"):
        return []  # model.qir and the manifest only
    names = [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        backends.get(name)  # raises UsageError naming the available ones
    return list(dict.fromkeys(names))


def _validate(src: str | Path, opts: ConvertOptions) -> None:
    from qexport.quant.recipe import resolve

    if opts.recipe is not None:
        resolve(opts.recipe)  # a bad recipe fails before any work
    for flag, path in (("--calib", opts.calib), ("--tokenizer", opts.tokenizer), ("--config", opts.config)):
        if path is not None and not Path(path).exists():
            raise UsageError(f"{flag} {path}: no such file or directory")
    if opts.device not in DEVICES:
        raise UsageError(f"--for must be {' or '.join(DEVICES)}, got {opts.device!r}")
    if opts.seq_len < 1:
        raise UsageError(f"--seq-len must be at least 1, got {opts.seq_len}")
    from qexport.backends.torch.gemm import GEMM_CHOICES  # no torch import: names only

    if opts.torch_gemm not in GEMM_CHOICES:
        choices = f"{', '.join(GEMM_CHOICES[:-1])} or {GEMM_CHOICES[-1]}"
        raise UsageError(f"--torch-gemm must be {choices}, got {opts.torch_gemm!r}")
    from qexport.backends.onnx.backend import LINEAR_FORMS  # no onnx import: names only

    if opts.onnx_linears not in LINEAR_FORMS:
        raise UsageError(f"--onnx-linears must be {' or '.join(LINEAR_FORMS)}, got {opts.onnx_linears!r}")


def convert(src: str | Path, out: Path, opts: ConvertOptions, step: Step | None = None) -> dict[str, Any]:
    """Run the whole job; return the manifest (also written to OUT/manifest.json)."""
    from qexport.frontend.pipeline import capture_source

    step = step or (lambda _label: nullcontext())
    _validate(src, opts)
    options = backend_options(opts)
    targets = [backends.get(name, **options.get(name, {})) for name in opts.to]
    if opts.integer_io and "tflite" not in opts.to:
        raise UsageError("--integer-io applies to the tflite backend; add tflite to --to")
    if opts.torch_gemm != "auto" and not {"torch", "torch-aoti"} & set(opts.to):
        raise UsageError("--torch-gemm applies to the torch backends; add torch or torch-aoti to --to")
    if opts.onnx_linears != "integer" and "onnx" not in opts.to:
        raise UsageError("--onnx-linears applies to the onnx backend; add onnx to --to")
    plan = recipe_plan(targets, opts.recipe or (NPU_RECIPE if opts.device == "npu" else None))
    if opts.learn:
        for name in plan:
            learned_recipe(name)  # a recipe that cannot learn fails before any work
    with StagedOutput(out) as stage:
        with step("capturing the model with torch.export"):
            captured = capture_source(
                src,
                seq_len=opts.seq_len,
                config=opts.config,
                trust_pickle=opts.trust_pickle,
                strict_params=opts.strict_params,
            )
        if captured.quantized is not None:  # PyTorch quantized it: its integers, every target
            if opts.recipe is not None or opts.device != "cpu" or opts.learn:
                raise UsageError(
                    f"{src}: the model is already quantized ({captured.quantized.metadata['recipe']['source']}); "
                    "--recipe, --for and --learn do not apply, its own integers are kept"
                )
            plan = {captured.quantized.metadata["recipe"]["name"]: targets}
            graphs = {name: captured.quantized for name in plan}
        else:
            graphs = _quantize(captured, list(plan), opts, step)
        for recipe, users in plan.items():
            for backend in users:
                backend.check(graphs[recipe])  # every backend vets its graph before any file is written
        irs, artifacts = _write(plan, graphs, stage.dir, step)
        first = graphs[next(iter(plan))]
        manifest = {
            "qexport_version": first.metadata.get("qexport_version"),
            "source": {
                "path": str(Path(src).absolute()) if not str(src).startswith("builtin:") else str(src),
                "kind": captured.source.kind,
                "sha256": captured.source.sha256,
                "architecture": first.metadata.get("architecture"),
                "config": None if opts.config is None else str(Path(opts.config).absolute()),
                "trust_pickle": opts.trust_pickle,
            },
            "shapes": {
                "seq_len": opts.seq_len,
                "dynamic": first.metadata["capture"]["dynamic_shapes"],
                "inputs": {n: [*v.shape] for n, v in first.inputs.items()},
                "input_defaults": first.metadata.get("input_defaults", {}),
                "outputs": {n: [*first.values[v].shape] for n, v in first.outputs.items()},
            },
            "recipe": first.metadata["recipe"],
            "calibration": next(
                (g.metadata["calibration"] for g in graphs.values() if g.metadata.get("calibration")), None
            ),
            "ir": irs[0],
            "irs": irs,
            "artifacts": artifacts,
            "notes": [as_note(n) for n in first.metadata.get("notes", [])]
            + [as_note(n) for a in artifacts for n in a.pop("notes", [])],
        }
        (stage.dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        stage.publish()
    manifest["_captured"] = captured  # in memory only: lets the parity check skip re-capturing
    return manifest


def backend_options(opts: ConvertOptions) -> dict[str, dict[str, Any]]:
    """Each built-in backend's constructor options, from the CLI's per-backend flags."""
    return {
        "tflite": {"integer_io": opts.integer_io},
        "torch": {"gemm": opts.torch_gemm},
        "torch-aoti": {"gemm": opts.torch_gemm},
        "onnx": {"integer_linears": opts.onnx_linears == "integer"},
    }


def recipe_plan(targets: Sequence[Any], recipe: str | None) -> dict[str, list[Any]]:
    """Recipe name -> the backends lowered from it, in the order of ``targets``."""
    plan: dict[str, list[Any]] = {}
    for backend in targets:
        plan.setdefault(recipe or getattr(backend, "default_recipe", DEFAULT_RECIPE), []).append(backend)
    return plan or {recipe or DEFAULT_RECIPE: []}


def _write(
    plan: dict[str, list[Any]], graphs: dict[str, Any], folder: Path, step: Step
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each recipe's IR (the first as model.qir), then the artifacts lowered from it: their manifest entries."""
    irs, artifacts = [], []
    for index, (recipe, users) in enumerate(plan.items()):
        graph = graphs[recipe]
        name = graph.metadata["recipe"]["name"]
        ir_file = "model.qir" if index == 0 else f"model.{_file_safe(name)}.qir"
        with step(f"writing {ir_file}"):
            serde.save(graph, folder / ir_file)
        irs.append({"file": ir_file, "recipe": name, **_file_facts(folder / ir_file)})
        for backend in users:
            file = f"model{backend.suffix}"
            with step(f"lowering to {backend.name} (recipe {name})"):
                facts = backend.lower(graph, folder / file)
            artifacts.append(
                {"backend": backend.name, "file": file, "ir": ir_file, **_file_facts(folder / file), **facts}
            )
    return irs, artifacts


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def _quantize(captured: Any, recipes: list[str], opts: ConvertOptions, step: Step) -> dict[str, Any]:
    """One quantized IR per recipe, from one capture and (when a recipe needs it) one calibration set."""
    from qexport.quant.calibration import load_calibration
    from qexport.quant.engine import quantize_graph
    from qexport.quant.recipe import resolve

    graph = captured.graph
    calib = None
    if any(resolve(r).needs_calibration or (opts.learn or resolve(r).learn) for r in recipes):
        tokenizer = opts.tokenizer or captured.source.tokenizer_dir
        calib = load_calibration(
            graph,
            opts.calib if opts.calib is None else Path(opts.calib),
            seq_len=opts.seq_len,
            tokenizer_dir=tokenizer,
            learning=any(opts.learn or resolve(r).learn for r in recipes),
        )
        for warning in calib.warnings:
            graph.metadata.setdefault("notes", []).append(warning)
    graphs = {}
    for name in recipes:
        recipe = learned_recipe(name) if opts.learn else resolve(name)
        used = calib if recipe.needs_calibration else None
        if recipe.learn:
            from qexport.learn import for_ranges

            used = for_ranges(used)
        with step(
            f"quantizing with recipe {recipe.name!r}"
            + (f" ({used.size} calibration samples)" if used else "")
        ):
            graphs[name] = quantize_graph(graph, recipe, used)
        if recipe.learn:
            from qexport.learn import learn

            label = f"learning recipe {recipe.name!r} from {calib.size if calib else 0} calibration samples"
            with step(label) as shown:

                def progress(
                    what: str, done: int, total: int, shown: Any = shown, label: str = label
                ) -> None:
                    if hasattr(shown, "update"):
                        shown.update(f"{label}: {what} {done}/{total}")

                graphs[name] = learn(graph, graphs[name], recipe, calib, progress)
    return graphs


def learned_recipe(name: str) -> Any:
    """Recipe ``name`` with ``learn = true`` (a RecipeError when its scheme cannot learn)."""
    from dataclasses import replace

    from qexport.quant.recipe import resolve

    recipe = resolve(name)
    return recipe if recipe.learn else replace(recipe, learn=True)


def _file_facts(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
