"""Lower an IR graph to a torch.export program (.pt2) and run it with plain torch."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from qexport.atomic import write_bytes
from qexport.backends.torch.gemm import resolve_gemm
from qexport.errors import QExportError
from qexport.ir.graph import Graph
from qexport.report.notes import WITHOUT_VNNI, note


class TorchBackend:
    """``gemm`` picks how integer Linears multiply in the program: ``int8`` (``torch._int_mm``,
    fast on CPUs with AVX-512 VNNI or AMX), ``float`` (a float32 matmul of the same integers:
    the same results on any CPU, the only sane choice where ``_int_mm`` is a scalar loop, though
    slower than torch eager fp32 there: 1.15-1.38x on AVX2, docs/backend-torch.md),
    or ``auto`` (decided by the CPU converting, recorded in the manifest)."""

    name = "torch"
    default_recipe = "int8"
    suffix = ".pt2"

    def __init__(self, *, gemm: str = "auto") -> None:
        self.gemm = gemm

    def check(self, graph: Graph) -> None:
        from qexport.backends import check_lowerable
        from qexport.backends.torch.ops import TORCH_OPS
        from qexport.ir.ops import Op

        extra = set(graph.inputs) - {"input_ids", "attention_mask", "token_type_ids"}
        if extra or "input_ids" not in graph.inputs:
            raise QExportError(
                f"torch backend takes input_ids/attention_mask/token_type_ids; this graph has {sorted(graph.inputs)}"
            )
        check_lowerable(graph, "torch", {*TORCH_OPS, Op.LINEAR}, constant_weights=False)

    def lower(self, graph: Graph, path: Path) -> dict[str, Any]:
        import torch

        program, gemm, integer = self.export(graph)
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.save(program, buffer)
        write_bytes(Path(path), buffer.getvalue())
        facts: dict[str, Any] = {"torch_version": torch.__version__.split("+")[0], "gemm": gemm}
        if integer:
            facts["notes"] = [_gemm_note(gemm, self.gemm)]
        return facts

    def export(self, graph: Graph) -> tuple[Any, str, bool]:
        """(the ``torch.export`` program of ``graph``, the GEMM it uses, whether it has integer
        Linears); batch and sequence dynamic."""
        import torch

        from qexport.backends.torch.module import IRModule

        self.check(graph)
        gemm = resolve_gemm(self.gemm)
        module = IRModule(graph, gemm=gemm).eval()
        example = _example_inputs(graph)
        dims: dict[str, Any] = {}
        dynamic: dict[str, dict[int, Any]] = {}
        for name, info in graph.inputs.items():
            spec = {}
            for i, d in enumerate(info.shape):
                if isinstance(d, str):
                    low = 1  # the IR has no guard on its dims: [CLS][SEP] (2 tokens) and 1 token run too
                    high = (graph.metadata.get("capture", {}).get("max_seq") or 4096) if d == "seq" else 1024
                    dims.setdefault(d, torch.export.Dim(d, min=low, max=high))
                    spec[i] = dims[d]
            dynamic[name] = spec
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                program = torch.export.export(module, (), example, dynamic_shapes=dynamic)
            except Exception as exc:  # torch raises many types
                raise QExportError(
                    f"{self.name} backend: torch.export failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
                ) from None
        for node in program.graph.nodes:  # source lines of this install: not part of the artifact
            node.meta.pop("stack_trace", None)
        return program, gemm, bool(module.integer_inputs)

    def load(self, path: Path) -> Any:
        import torch

        return torch.export.load(str(path)).module()

    def run(self, path: Path, inputs: dict[str, Any], *, module: Any = None) -> dict[str, Any]:
        import torch

        module = module or self.load(path)
        with torch.no_grad():
            out = module(**{k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}


def _gemm_note(gemm: str, asked: str) -> dict[str, Any]:
    why = " (this CPU's choice: --torch-gemm auto)" if asked == "auto" else ""
    if gemm == "int8":
        return note(
            "torch: model.pt2 multiplies with torch._int_mm: deploy it on x86 with AVX-512 VNNI or AMX",
            f"Integer Linears run torch._int_mm{why}; it is fast only on x86 CPUs with AVX-512 VNNI or "
            "AMX and a scalar loop elsewhere (~50x slower than a float matmul on an AVX2 EPYC, measured). "
            "--torch-gemm float gives a .pt2 for any CPU (docs/backend-torch.md)",
            cpu=None if asked != "auto" else WITHOUT_VNNI,
        )
    return note(
        "torch: model.pt2 multiplies in float32 (exact, any CPU; smaller than fp32, not faster); "
        "--torch-gemm int8 is faster on VNNI/AMX",
        f"Integer Linears run float32 matmuls of the IR's integers{why}: exact and portable, but with "
        "its quantize and rescale steps the int8 program is slower than torch eager fp32 on AVX2 (measured "
        "1.15-1.38x; model.aoti.pt2 1.18x). It buys size (0.27x), not speed: for speed on such a CPU use "
        "the fp32 model.aoti.pt2 or the ONNX / TFLite int8 files; on AVX-512 VNNI / AMX servers "
        "--torch-gemm int8 uses torch._int_mm (docs/backend-torch.md)",
    )


def _example_inputs(graph: Graph) -> dict[str, Any]:
    import torch

    result = {}
    for name, info in graph.inputs.items():
        shape = [2 if d == "batch" else 16 if isinstance(d, str) else d for d in info.shape]
        result[name] = (
            torch.ones(shape, dtype=torch.int64)
            if name == "attention_mask"
            else torch.zeros(shape, dtype=torch.int64)
        )
    return result
