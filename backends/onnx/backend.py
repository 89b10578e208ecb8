"""The ONNX backend: lower a (quantized) IR graph to an ONNX QDQ model and run it with onnxruntime.

What lives where: ``lowering`` (one function per IR op, the table), ``attention`` (the fused
``Attention`` op), ``linears`` (which Linears run on integer kernels), ``dynamic`` (run-time
quantization in float ops), ``notes`` (what the user is told), ``session`` (onnxruntime
sessions), ``qnn`` (Qualcomm's HTP), ``builder`` (the ONNX graph under construction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qexport.atomic import write_bytes
from qexport.backends.onnx.cpu import EXACT_U8U8, FLOAT_MATMULNBITS, NO_DENORMALS, flush_denormals
from qexport.backends.onnx.dynamic import dynamic_fake_quant
from qexport.backends.onnx.linears import float_linears
from qexport.backends.onnx.notes import HTP_NOTE, cpu_notes
from qexport.backends.onnx.qnn import HTP_ARCH, QNN_UNSUPPORTED, signed_matmul_inputs
from qexport.backends.onnx.session import new_session, run_intermediates, session_options
from qexport.errors import QExportError
from qexport.ir.graph import Graph
from qexport.ir.integer_form import is_full_integer
from qexport.ir.ops import Op

# 21: int16 and per-axis int8 QuantizeLinear/DequantizeLinear; 23: the Attention op
# (backends/onnx/attention.py). IR version 11 is the one opset 23 came with (onnx 1.18).
OPSET = 23
IR_VERSION = 11
PRODUCER = "qexport"
# How integer Linears are written (--onnx-linears; docs/backend-onnx.md, "Graph optimizations").
LINEAR_FORMS = ("integer", "qdq")
_LAZY = {"Linear": 1, "Gather": 0}  # inputs whose layout the op's own lowering decides


class OnnxBackend:
    name = "onnx"
    default_recipe = "int8"  # onnxruntime's QGemm needs a static 8-bit input
    suffix = ".onnx"

    def __init__(
        self,
        fuse_attention: bool = True,
        integer_linears: bool = True,
        npu_form: bool | None = None,
    ) -> None:
        # False: attention stays ~13 separate ops, for tools that cannot read the opset-23
        # Attention op (onnxruntime's quantize_dynamic mistakes it for com.microsoft.Attention).
        self.fuse_attention = fuse_attention
        # False: integer Linears as plain QDQ (scales inside the DequantizeLinears). QGemm then
        # rescales inside its kernel, ~5 % faster in onnxruntime, but a runtime that does not
        # fuse rounds every product (38 dB from the fused result). See docs/backend-onnx.md.
        self.integer_linears = integer_linears
        # The form Qualcomm's HTP (onnxruntime's QNN provider) takes whole: activations as
        # uint8/uint16 (its Abs, Exp, Pow... refuse int16; same real values, zero point
        # shifted) but int16 into MatMul (exact only so), plain QDQ Linears and static shapes
        # [1, seq]. None: on for full-integer graphs (--for npu). docs/integer.md.
        self.npu_form = npu_form

    def writes_npu_form(self, graph: Graph) -> bool:
        """Whether ``graph`` is written in the NPU form (``npu_form``; None: full-integer graphs)."""
        return is_full_integer(graph) if self.npu_form is None else self.npu_form

    def check(self, graph: Graph) -> None:
        from qexport.backends import check_lowerable
        from qexport.backends.onnx.lowering import LOWERINGS

        check_lowerable(graph, "onnx", LOWERINGS)
        if self.writes_npu_form(graph):  # Qualcomm's HTP must take every node of the NPU form
            supported = [op for op in LOWERINGS if op not in QNN_UNSUPPORTED]
            check_lowerable(graph, "onnx (NPU form, Qualcomm HTP)", supported)

    def build(self, graph: Graph) -> Any:
        """The onnx.ModelProto for ``graph`` (``lower`` checks its bytes with onnx.checker)."""
        from onnx import helper

        from qexport import __version__
        from qexport.backends.onnx.builder import OnnxBuilder
        from qexport.backends.onnx.lowering import _ONNX_DTYPES, LOWERINGS
        from qexport.ir.attention import fuse_attention

        self.check(graph)
        npu = self.writes_npu_form(graph)
        unsigned = npu or _int8_activations(graph)
        if self.fuse_attention:
            graph = fuse_attention(graph)  # float attention islands -> one Attention node each
        # NPU form: Linears as plain QDQ (DequantizeLinear -> MatMul -> QuantizeLinear), the
        # pattern QNN maps onto its integer FullyConnected.
        b = OnnxBuilder(graph, integer_linears=self.integer_linears and not npu, unsigned=unsigned)
        seq = int(graph.metadata.get("capture", {}).get("seq_len", 128))

        def shape(dims: tuple[Any, ...]) -> list[Any]:  # static [1, seq] for NPU compilers
            return [{"batch": 1, "seq": seq}.get(d, d) if npu else d for d in dims]

        for node in graph.nodes:
            # Linear weights are laid out by lower_linear itself (transposed), not resolved here.
            xs = [
                ""
                if (node.op.value in ("Linear", "Gather") and i == _LAZY[node.op.value])
                else _resolve(b, graph, name)
                for i, name in enumerate(node.inputs)
            ]
            if npu and node.op is Op.MATMUL:
                xs = signed_matmul_inputs(b, graph, node, xs)
            out = node.outputs[0]
            spec = graph.quant.get(out)
            produced = f"{out}_float" if spec is not None else out
            LOWERINGS[node.op](b, node, xs, produced)
            if spec is not None and spec.dynamic:
                dynamic_fake_quant(b, out, produced, spec)
            elif spec is not None:
                b.qdq_activation(out, produced, spec)
        outputs = []
        for public, value in graph.outputs.items():
            b.node("Identity", [value], public, name=f"output.{public}")
            info = graph.values[value]
            outputs.append(helper.make_tensor_value_info(public, _ONNX_DTYPES[info.dtype], shape(info.shape)))
        b.prune(set(graph.outputs))
        inputs = [
            helper.make_tensor_value_info(n, _ONNX_DTYPES[i.dtype], shape(i.shape))
            for n, i in graph.inputs.items()
        ]
        model = helper.make_model(
            helper.make_graph(b.nodes, "qexport", inputs, outputs),
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name=PRODUCER,
            producer_version=__version__,
        )
        # Initializers join the model one at a time and the builder's copy is dropped at once:
        # make_graph + make_model would hold three copies of every weight (BERT-large: +1 GB).
        for name in list(b.initializers):
            model.graph.initializer.append(b.initializers.pop(name))
        model.ir_version = IR_VERSION
        recipe = graph.metadata.get("recipe", {})
        helper.set_model_props(model, {"qexport.recipe": str(recipe.get("name", recipe))})
        return model

    def lower(self, graph: Graph, path: Path) -> dict[str, Any]:
        import onnx

        model = self.build(graph)
        ir_version = model.ir_version
        data = model.SerializeToString(deterministic=True)
        del model  # the proto and its bytes are each the size of the model: hold one at a time
        try:
            onnx.checker.check_model(data, full_check=True)  # checks these very bytes
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise QExportError(
                f"onnx backend produced an invalid model: {str(exc).splitlines()[0]}"
            ) from None
        write_bytes(Path(path), data)
        npu = self.writes_npu_form(graph)
        facts: dict[str, Any] = {
            "opset": OPSET,
            "npu_form": npu,  # uint16 for 16-bit tensors, static shapes: what QNN's HTP takes
            "ir_version": ir_version,
            "linears": LINEAR_FORMS[0] if self.integer_linears and not npu else LINEAR_FORMS[1],
        }
        notes = [HTP_NOTE] if npu else cpu_notes(graph, self.integer_linears)
        if npu:
            facts["qnn_provider_options"] = {"htp_arch": HTP_ARCH}
        facts["session_config"] = {
            **NO_DENORMALS,
            **(FLOAT_MATMULNBITS if float_linears(graph, self.integer_linears) else {}),
        }
        facts["session_config_x86_without_vnni"] = EXACT_U8U8
        if notes:
            facts["notes"] = notes
        return facts

    def session(self, path: Path, *, threads: int = 2, optimize: bool = True) -> Any:

        return new_session(str(path), session_options(threads, optimize))

    def run_intermediates(self, path: Path, inputs: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """Named intermediate tensors (IR value names) for the bisector."""
        return run_intermediates(path, inputs, names)

    def run(self, path: Path, inputs: dict[str, Any], *, session: Any = None) -> dict[str, Any]:
        sess = session or self.session(path)
        feed = {i.name: np.asarray(inputs[i.name]).astype(np.int64) for i in sess.get_inputs()}
        names = [o.name for o in sess.get_outputs()]
        batch = len(next(iter(feed.values())))
        with flush_denormals():
            if sess.get_inputs()[0].shape[0] != 1 or batch == 1:
                return dict(zip(names, sess.run(names, feed), strict=True))
            # the NPU form has static shapes [1, seq] (QNN compiles no dynamic dims): one sample a run
            runs = [sess.run(names, {k: v[i : i + 1] for k, v in feed.items()}) for i in range(batch)]
        return {name: np.concatenate([r[j] for r in runs]) for j, name in enumerate(names)}


def _resolve(b: Any, graph: Graph, name: str) -> str:
    """ONNX name for an IR input: quantized constants become DequantizeLinear outputs."""
    if not name:
        return ""
    if name in graph.constants:
        spec = graph.quant.get(name)
        array = graph.constants[name]
        if spec is None:
            return b.initializer(name, array)
        return b.dequantized_constant(name, array, spec, axis=spec.axis)
    return name


def _int8_activations(graph: Graph) -> bool:
    """A static per-tensor int8 activation (a QAT or pt2e source's, or a recipe file's). Read by a
    Reshape, onnxruntime's QDQ propagation copies its Q/DQ pair past it and its int8-to-uint8 pass
    then rewrites the zero point under the shared name: the session fails to load ("output_dtype
    INT8 does not match y_zero_point type UINT8"). Stored as uint8 (the same real values,
    ``OnnxBuilder.stored``) there is nothing to rewrite. Built-in CPU recipes quantize
    activations to uint8 already, so their files do not change."""
    return any(
        not spec.dynamic
        and spec.axis is None
        and spec.dtype.storage == "int8"
        and value not in graph.constants
        for value, spec in graph.quant.items()
    )
