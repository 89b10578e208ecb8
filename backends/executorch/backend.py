"""Lower an IR graph to an ExecuTorch program (``model.pte``) and run it with ExecuTorch's runtime.

Phones run PyTorch models through ExecuTorch, whose CPU backend is XNNPACK. XNNPACK has two
int8 Linears, and the backend lowers the IRs that mean one of them (``lowering_form``):

- **dynamic** (``qd8-f32-qc8w``: int8 per-channel symmetric weights, inputs quantized per row at
  run time by XNNPACK's asymmetric rule) is the IR's ``dynamic`` recipe exactly (docs/ir.md).
  The IR's float twin (weights dequantized, specs dropped) becomes a torch module (``IRModule``,
  as for ``--to torch``) exported with static shapes [1, seq]; ExecuTorch's XNNPACK quantizer
  (pt2e, dynamic, per channel) quantizes its Linears, whose weights re-quantize to the IR's
  very integers (checked before anything is written).
- **static** (``qs8``: 8-bit per-tensor input and output, int8 per-channel weights) is what the
  full-integer ``npu-int8`` describes on BERT models. The IR's specs become ExecuTorch's
  own quantize/dequantize ops at the IR's params (``qdq.py``): no quantizer, no calibration.

Either way ``to_edge_transform_and_lower`` with the XNNPACK partitioner puts every Linear (and
what else XNNPACK takes) into delegates, and ``to_executorch`` serializes the program.

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
from qexport.ir.linear import LinearForm, classify
from qexport.ir.ops import Op

RECIPE = "dynamic"
EIGHT_BIT = (QDType.INT8, QDType.UINT8)
STATIC_RECIPES = ("npu-int8",)  # built-in recipes whose Linears are XNNPACK-static on BERT models


def lowering_form(graph: Graph) -> str:
    """``"dynamic"`` (XNNPACK's qd8 Linear) or ``"static"`` (its qs8 Linear): the form every
    Linear of ``graph`` shares; a Linear in neither, or a mix, is refused naming it."""
    forms = {}
    for node in graph.nodes:
        if node.op is not Op.LINEAR:
            continue
        info = classify(graph, node)
        w, x, out = info.w_spec, info.x_spec, info.out_spec
        int8_weight = w is not None and w.dtype is QDType.INT8 and info.symmetric_weight
        if (
            info.form is LinearForm.STEPS
            and int8_weight
            and w is not None
            and w.axis == 0
            and x is not None
            and x.dtype is QDType.INT8
            and x.axis == -1
        ):
            forms[node.name] = "dynamic"
        elif (
            info.form is LinearForm.STATIC
            and int8_weight
            and x is not None
            and x.dtype in EIGHT_BIT
            and out is not None
            and not out.dynamic
            and out.axis is None
            and out.dtype in EIGHT_BIT
        ):
            forms[node.name] = "static"
        else:
            raise QExportError(
                f"executorch backend: Linear {node.name!r} is quantized as neither of XNNPACK's int8 "
                f"Linears: dynamic (int8 per-channel weights, int8 inputs per token at run time: "
                f"recipe {RECIPE!r}) or static (int8 per-channel weights, 8-bit per-tensor input and "
                f"output: recipes {', '.join(STATIC_RECIPES)}); convert with --recipe {RECIPE} or one "
                f"of those for --to executorch"
            )
    if len(set(forms.values())) > 1:
        dynamic = next(name for name, form in forms.items() if form == "dynamic")
        raise QExportError(
            f"executorch backend: Linear {dynamic!r} is dynamically quantized but others are static; "
            f"a .pte takes one form (--recipe {RECIPE} or one of {', '.join(STATIC_RECIPES)})"
        )
    form = next(iter(forms.values()), "static")
    for name, spec in graph.quant.items():
        if form == "dynamic" and name not in graph.constants and not spec.dynamic:
            raise QExportError(
                f"executorch backend: {name!r} has a static activation spec beside dynamically "
                f"quantized Linears; a .pte takes one form (--recipe {RECIPE} or one of "
                f"{', '.join(STATIC_RECIPES)})"
            )
    return form


class ExecutorchBackend:
    name = "executorch"
    default_recipe = RECIPE
    suffix = ".pte"

    def check(self, graph: Graph) -> None:
        from qexport.backends import check_lowerable
        from qexport.backends.torch.ops import TORCH_OPS

        check_lowerable(graph, "executorch", {*TORCH_OPS, Op.LINEAR})
        lowering_form(graph)

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
    """The ExecutorchProgramManager for ``graph``: a dynamic IR as its float twin with the
    Linears quantized by XNNPACK's quantizer to the IR's integers; a static one as its Q/DQ
    module (``qdq.py``); with ``quantize=False`` the float twin alone (the benchmark's fp32
    program from the same IR)."""
    import torch

    from qexport.backends.executorch.qdq import QDQModule, own_dequantize
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
            ops = {Op.MATMUL: _batched_matmul, Op.REDUCE_MEAN: _last_axis_mean}
            form = lowering_form(graph) if quantize else "float"
            if form == "static":
                exported = torch.export.export(QDQModule(graph, ops=ops).eval(), (), example)
                exported = torch.export.export(own_dequantize(exported.module()), (), example)
            else:
                module = IRModule(float_twin(graph), gemm="float", ops=ops)
                exported = torch.export.export(module.eval(), (), example)
            if form == "dynamic":
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


def _last_axis_mean(xs: list[Any], attrs: dict[str, Any], dims: Any) -> Any:
    """A mean over the last axis (LayerNorm's, in the full-integer recipes) as XNNPACK's one
    mean form: over the two inner axes of a 4-d tensor, kept. Other means as torch's."""
    import torch

    x = xs[0]
    axes = [int(a) % x.dim() for a in attrs["axes"]]
    if axes != [x.dim() - 1] or not attrs["keepdims"] or x.dim() < 2:
        return torch.mean(x, dim=axes, keepdim=bool(attrs["keepdims"]))
    inner = torch.mean(x.reshape(-1, x.shape[-2], x.shape[-1], 1), dim=[2, 3], keepdim=True)
    return inner.reshape(*x.shape[:-1], 1)


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
