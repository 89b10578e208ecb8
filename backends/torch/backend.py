"""Lower an IR graph to a torch.export program (.pt2) and run it with plain torch."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from qexport.atomic import write_bytes
from qexport.errors import QExportError
from qexport.ir.graph import Graph


class TorchBackend:
    name = "torch"
    suffix = ".pt2"

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

        from qexport.backends.torch.module import IRModule

        self.check(graph)
        module = IRModule(graph).eval()
        example = _example_inputs(graph)
        dims: dict[str, Any] = {}
        dynamic: dict[str, dict[int, Any]] = {}
        for name, info in graph.inputs.items():
            spec = {}
            for i, d in enumerate(info.shape):
                if isinstance(d, str):
                    low = 3 if d == "seq" else 1  # as at capture (MobileBERT guards seq - 1 != 1)
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
                    f"torch backend: torch.export failed ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
                ) from None
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
        write_bytes(Path(path), buffer.getvalue())
        return {"torch_version": torch.__version__.split("+")[0]}

    def load(self, path: Path) -> Any:
        import torch

        return torch.export.load(str(path)).module()

    def run(self, path: Path, inputs: dict[str, Any], *, module: Any = None) -> dict[str, Any]:
        import torch

        module = module or self.load(path)
        with torch.no_grad():
            out = module(**{k: torch.from_numpy(np.asarray(v).astype(np.int64)) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}


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
