"""Lower an IR graph to an ExecuTorch program (``model.pte``) and run it with ExecuTorch's runtime.

Phones run PyTorch models through ExecuTorch, whose CPU backend is XNNPACK. XNNPACK's
dynamically quantized Linear (``qd8-f32-qc8w``: int8 per-channel symmetric weights, inputs
quantized per row at run time by XNNPACK's asymmetric rule) is exactly what the IR's ``dynamic``
recipe describes (docs/ir.md), so that is the recipe this backend lowers:

1. the IR's float twin (weights dequantized, specs dropped) becomes a torch module
   (``IRModule``, as for ``--to torch``) exported with static shapes [1, seq];
2. ExecuTorch's XNNPACK quantizer (pt2e, dynamic, per channel) quantizes its Linears: their
   weights re-quantize to the IR's very integers (checked before anything is written), and the
   run-time input rule is XNNPACK's own;
3. ``to_edge_transform_and_lower`` with the XNNPACK partitioner puts every Linear (and what
   else XNNPACK takes) into delegates; ``to_executorch`` serializes the program.

See docs/backend-executorch.md.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from qexport.atomic import write_bytes
from qexport.errors import QExportError
from qexport.ir.arith import dequantize
from qexport.ir.graph import Graph, QDType, copy_graph
from qexport.ir.ops import Op

RECIPE = "dynamic"


class ExecutorchBackend:
    name = "executorch"
    default_recipe = RECIPE
    suffix = ".pte"

    def check(self, graph: Graph) -> None:
        from qexport.backends import check_lowerable
        from qexport.backends.torch.ops import TORCH_OPS

        check_lowerable(graph, "executorch", {*TORCH_OPS, Op.LINEAR})
        for node in graph.nodes:
            if node.op is not Op.LINEAR:
                continue
            x, w = graph.quant.get(node.inputs[0]), graph.quant.get(node.inputs[1])
            xnnpack = (
                w is not None
                and w.dtype is QDType.INT8
                and w.axis == 0
                and not w.zero_point.any()
                and x is not None
                and x.dynamic
                and not x.symmetric
                and x.dtype is QDType.INT8
                and x.axis == -1
            )
            if not xnnpack:
                raise QExportError(
                    f"executorch backend: Linear {node.name!r} is not quantized as XNNPACK's dynamic "
                    f"Linear computes (recipe {RECIPE!r}: int8 per-channel weights, int8 inputs per "
                    f"token at run time); convert with --recipe {RECIPE} for --to executorch"
                )
        for name, spec in graph.quant.items():
            if name not in graph.constants and not spec.dynamic:
                raise QExportError(
                    f"executorch backend: {name!r} has a static activation spec; the .pte runs "
                    f"recipe {RECIPE!r} (dynamically quantized Linears)"
                )

    def lower(self, graph: Graph, path: Path) -> dict[str, Any]:
        import io

        import torch

        self.check(graph)
        program = build_program(graph)
        buffer = io.BytesIO()
        program.write_to_file(buffer)
        write_bytes(Path(path), buffer.getvalue())
        delegated = _delegated_linears(program)
        return {
            "executorch_version": _version(),
            "torch_version": torch.__version__.split("+")[0],
            "delegate": "XnnpackBackend",
            "linears_in_delegates": delegated,
            "static_shape": [1, _seq(graph)],
        }

    def run(self, path: Path, inputs: dict[str, Any], *, program: Any = None) -> dict[str, Any]:
        """Sample by sample (the program has batch 1); outputs stacked along axis 0."""
        import torch

        program = program or self.load(path)
        with _quiet():  # XNNPACK's CPU probing on the first run
            names = program.load_method("input_names").execute([])
            outputs = program.load_method("output_names").execute([])
            forward = program.load_method("forward")
            batch = len(np.asarray(inputs[names[0]]))
            rows: list[list[np.ndarray]] = []
            for i in range(batch):
                feed = [torch.from_numpy(np.asarray(inputs[n][i : i + 1]).astype(np.int64)) for n in names]
                rows.append([t.numpy() for t in forward.execute(feed)])
        return {name: np.concatenate([r[j] for r in rows]) for j, name in enumerate(outputs)}

    def load(self, path: Path) -> Any:
        """The ExecuTorch program (``load_method("forward")`` runs it)."""
        with _quiet():
            from executorch.runtime import Runtime

            return Runtime.get().load_program(str(path))


@contextmanager
def _quiet() -> Iterator[None]:
    """torchao logs the CUDA kernels it cannot load on a CPU machine, torch a pytree
    deprecation, and ExecuTorch's runtime its CPU probing (on fd 2): none is the user's business."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _version() -> str:
    from importlib.metadata import version

    return version("executorch")


def _seq(graph: Graph) -> int:
    return int(graph.metadata.get("capture", {}).get("seq_len", 128))


def float_twin(graph: Graph) -> Graph:
    """``graph`` with every quantized constant dequantized and no specs: what the XNNPACK
    quantizer starts from (the re-quantized weights are checked against the IR's integers)."""
    twin = copy_graph(graph)
    for name, spec in graph.quant.items():
        if name in twin.constants:
            twin.constants[name] = dequantize(twin.constants[name], spec)
    twin.quant = {}
    return twin


def build_program(graph: Graph, *, quantize: bool = True) -> Any:
    """The ExecutorchProgramManager for ``graph``'s float twin, its Linears quantized by
    XNNPACK's quantizer to the IR's integers (``quantize``) or left float (the benchmark's fp32
    program from the same IR)."""
    import torch

    from qexport.backends.torch.module import IRModule

    with _quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from executorch.exir import to_edge_transform_and_lower
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    seq = _seq(graph)
    example = {n: torch.ones((1, seq), dtype=torch.int64) for n in graph.inputs}
    with _quiet(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            module = IRModule(float_twin(graph), gemm="float", ops={Op.MATMUL: _batched_matmul})
            exported = torch.export.export(module.eval(), (), example)
            if quantize:
                quantizer = XNNPACKQuantizer()
                quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
                prepared = prepare_pt2e(exported.module(), quantizer)
                prepared(**example)  # weights only: activation ranges are taken at run time
                converted = convert_pt2e(prepared)
                _check_integers(graph, converted)
                exported = torch.export.export(converted, (), example)
            edge = to_edge_transform_and_lower(
                exported,
                partitioner=[XnnpackPartitioner()],
                # what the file takes and returns, by name (a .pte method's values are positional)
                constant_methods={"input_names": list(graph.inputs), "output_names": list(graph.outputs)},
            )
            return edge.to_executorch()
        except QExportError:
            raise
        except Exception as exc:  # export, quantizer and lowering raise many types
            raise QExportError(
                f"executorch backend: lowering failed ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
            ) from None


def _batched_matmul(xs: list[Any], attrs: dict[str, Any], dims: Any) -> Any:
    """Attention's [b, h, s, d] products as one bmm: ``torch.matmul`` exports as expand_copy +
    bmm, and ExecuTorch runs the copies (24 in MiniLM) on portable kernels."""
    import torch

    a, b = xs
    if a.dim() < 3 or a.dim() != b.dim() or a.shape[:-2] != b.shape[:-2]:
        return torch.matmul(a, b)
    out = torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return out.reshape(*a.shape[:-1], b.shape[-1])


def _check_integers(graph: Graph, converted: Any) -> None:
    """Every IR Linear weight must come out of the XNNPACK quantizer as the same integers."""
    import torch

    found = set()
    for node in converted.graph.nodes:
        if node.op == "call_function" and "dequantize_per_channel" in str(node.target):
            source = node.args[0]
            if source.op == "get_attr":
                tensor = getattr(converted, source.target)
                if tensor.dtype == torch.int8:
                    found.add(tensor.numpy().tobytes())
    for node in graph.nodes:
        if node.op is Op.LINEAR and graph.constants[node.inputs[1]].astype(np.int8).tobytes() not in found:
            raise QExportError(
                f"executorch backend: XNNPACK's quantizer did not reproduce the integers of Linear "
                f"{node.name!r}; the .pte would not compute the IR"
            )


def _delegated_linears(program: Any) -> str:
    """How many linear ops stayed outside the XNNPACK delegates (must be none)."""
    outside = sum(
        1
        for node in program.exported_program().graph_module.graph.nodes
        if node.op == "call_function" and any(k in str(node.target) for k in ("linear", "addmm", ".mm."))
    )
    if outside:
        raise QExportError(
            f"executorch backend: {outside} Linear ops were left outside the XNNPACK delegates"
        )
    return "all"
